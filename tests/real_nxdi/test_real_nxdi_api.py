"""The Autoport compiler and inference APIs on the nxdi target, called from a user's script in a folder
outside the repository with NxDI's own Llama class: CPU mode builds NxDI's CPU application (nothing
compiled) and generates HF's greedy text; without cpu_mode there are no NeuronCores to compile for."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """
import json, sys
import torch, transformers
from neuronx_distributed_inference.models.llama.modeling_llama import NeuronLlamaForCausalLM
from pytest_autoport.api import CompilationConfig, compile_model, run_inference_with_classes

WEIGHTS, PROMPT = sys.argv[1], "The days of the week are Monday, Tuesday,"
common = dict(model_class=NeuronLlamaForCausalLM, model_path=WEIGHTS, seq_len=32, use_fp16=False,
              target="nxdi", hf_model_class="LlamaForCausalLM")
on_device = compile_model(CompilationConfig(**common, output_path="device_model"))
cpu = compile_model(CompilationConfig(**common, output_path="cpu_model", cpu_mode=True))
greedy = run_inference_with_classes(NeuronLlamaForCausalLM, model_path=WEIGHTS, compiled_path="cpu_model",
                                    prompt=PROMPT, max_new_tokens=8, suppress_special_tokens=False)
tok = transformers.AutoTokenizer.from_pretrained(WEIGHTS)
hf = transformers.LlamaForCausalLM.from_pretrained(WEIGHTS, torch_dtype=torch.float32)
ids = tok(PROMPT, return_tensors="pt")["input_ids"]
out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False)
hf_text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
print("RESULT " + json.dumps({"on_device": on_device, "cpu": cpu, "greedy": greedy, "hf": hf_text}))
"""


@pytest.mark.slow
def test_cpu_mode_compiles_nothing_and_generates_hfs_greedy_text(tmp_path, tiny_weights):
    assert REPO not in tmp_path.parents
    (tmp_path / "script.py").write_text(textwrap.dedent(SCRIPT))
    proc = subprocess.run(
        [sys.executable, "script.py", str(tiny_weights("llama"))],
        cwd=tmp_path,
        env=dict(os.environ),  # the tier's PYTHONPATH: its sitecustomize and this repository
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])

    assert result["on_device"] is False
    assert "cannot compile here" in proc.stderr and "cpu_mode=True" in proc.stderr
    assert (tmp_path / "device_model/compile_error.log").is_file()

    assert result["cpu"] is True
    saved = json.loads((tmp_path / "cpu_model/neuron_config.json").read_text())
    assert saved["target"] == "nxdi" and saved["cpu_mode"] is True and saved["graphs"] == []
    assert saved["model_class"].endswith("modeling_llama.py:NeuronLlamaForCausalLM")
    success, response, metrics = result["greedy"]
    assert success is True, metrics
    assert response.strip() and response == result["hf"]
    assert metrics["path"] == "cpu" and metrics["new_tokens"] == 8
