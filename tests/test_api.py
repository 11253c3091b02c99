"""The Autoport compiler and inference APIs, called as a user's script would call them: from a project
folder outside this repository, with the port's classes imported by the script itself."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SCRIPT = """
import json, sys
sys.path.insert(0, ".")
from neuron_port.llama.modeling_llama import NeuronLlamaForCausalLM
from pytest_autoport.api import CompilationConfig, compile_model, run_inference_with_classes

WEIGHTS, PROMPT = sys.argv[1], "The days of the week are Monday, Tuesday,"
config = CompilationConfig(
    model_class=NeuronLlamaForCausalLM, model_path=WEIGHTS,
    output_path="agent_artifacts/data/compiled_model", batch_size=1, seq_len=32, use_fp16=False,
)
compiled = compile_model(config)
common = dict(model_class=NeuronLlamaForCausalLM, model_path=WEIGHTS,
              compiled_path="agent_artifacts/data/compiled_model", prompt=PROMPT, max_new_tokens=8)
greedy = run_inference_with_classes(**common, temperature=0.0, suppress_special_tokens=False)
sampled = run_inference_with_classes(**common, temperature=0.9, top_k=20, seed=3)
cpu = dict(model_class=NeuronLlamaForCausalLM, model_path=WEIGHTS, output_path="cpu_model", seq_len=32,
           use_fp16=False, cpu_mode=True)
cpu_compiled = compile_model(CompilationConfig(**cpu))
cpu_greedy = run_inference_with_classes(**{**common, "compiled_path": "cpu_model"}, suppress_special_tokens=False)
cut_compiled = compile_model(CompilationConfig(**{**cpu, "output_path": "cut_model", "num_layers": 1}))
cut_greedy = run_inference_with_classes(**{**common, "compiled_path": "cut_model"})

import torch, transformers
tok = transformers.AutoTokenizer.from_pretrained(WEIGHTS)
hf = transformers.LlamaForCausalLM.from_pretrained(WEIGHTS, dtype=torch.float32)
ids = tok(PROMPT, return_tensors="pt")["input_ids"]
out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False)
hf_text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
print("RESULT " + json.dumps({"compiled": compiled, "greedy": greedy, "sampled": sampled, "hf": hf_text,
                              "cpu_compiled": cpu_compiled, "cpu_greedy": cpu_greedy,
                              "cut_compiled": cut_compiled, "cut_greedy": cut_greedy}))
"""


def _run(folder: Path, script: str, *args: str) -> subprocess.CompletedProcess:
    (folder / "script.py").write_text(textwrap.dedent(script))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "script.py", *args], cwd=folder, env=env, capture_output=True, text=True, timeout=900
    )


@pytest.mark.slow
def test_compile_and_inference_from_a_script_outside_the_repository(tmp_path, tiny_weights):
    assert REPO not in tmp_path.parents
    shutil.copytree(
        REPO / "neuron_port", tmp_path / "neuron_port", ignore=shutil.ignore_patterns("__pycache__")
    )
    proc = _run(tmp_path, SCRIPT, str(tiny_weights("llama")))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    assert result["compiled"] is True
    saved = json.loads((tmp_path / "agent_artifacts/data/compiled_model/neuron_config.json").read_text())
    assert (saved["batch_size"], saved["seq_len"], saved["dtype"]) == (1, 32, "float32")
    assert saved["model_class"].endswith("modeling_llama.py:NeuronLlamaForCausalLM")
    assert Path(saved["artifact"]).is_dir() and saved["graphs"]

    success, response, metrics = result["greedy"]
    assert success is True, metrics
    assert response.strip() and response == result["hf"]  # greedy through the compiled graphs matches HF FP32
    assert metrics["new_tokens"] >= 1 and metrics["tokens_per_s"] > 0 and metrics["latency_s"] > 0
    assert metrics["sampling"] == "greedy"
    success, sampled, metrics = result["sampled"]
    assert success is True and metrics["sampling"].startswith("T=0.9")

    # CPU mode: nothing compiled, the eager port generates the same greedy text
    assert result["cpu_compiled"] is True
    saved = json.loads((tmp_path / "cpu_model/neuron_config.json").read_text())
    assert saved["cpu_mode"] is True and saved["graphs"] == [] and saved["path"] == "cpu"
    assert not (tmp_path / "cpu_model/graphs").exists()
    success, response, metrics = result["cpu_greedy"]
    assert success is True, metrics
    assert response == result["hf"] and metrics["path"] == "cpu"
    assert result["greedy"][2]["path"] == "compiled"
    assert saved["layers"] is None

    # num_layers: the first decoder layer only, as --autoport-layers=1 judges it
    assert result["cut_compiled"] is True
    cut = json.loads((tmp_path / "cut_model/neuron_config.json").read_text())
    assert cut["layers"] == {"judged": 1, "total": 2} and cut["num_layers"] == 1
    assert result["cut_greedy"][0] is True, result["cut_greedy"][2]


FAILING = """
import sys
from pytest_autoport.api import CompilationConfig, compile_model, run_inference_with_classes

missing = CompilationConfig(model_class="neuron_port/nothing.py:Model", model_path=sys.argv[1], output_path="out")
print("MISSING", compile_model(missing))
nxdi = CompilationConfig(model_class="port.py:Port", model_path=sys.argv[1], output_path="out_nxdi", target="nxdi")
print("NXDI", compile_model(nxdi))
print("NOT_COMPILED", run_inference_with_classes(model_class="port.py:Port", compiled_path="nowhere"))
"""


def test_failures_return_false_with_a_message(tmp_path, tiny_weights):
    pytest.importorskip("torch")
    try:
        import neuronx_distributed_inference  # noqa: F401

        pytest.skip("NxD Inference is installed: the nxdi failure path does not apply")
    except ImportError:
        pass
    (tmp_path / "port.py").write_text("import torch\nclass Port(torch.nn.Module):\n    pass\n")
    proc = _run(tmp_path, FAILING, str(tiny_weights("llama")))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MISSING False" in proc.stdout and "NXDI False" in proc.stdout
    assert "compile failed:" in proc.stderr and "file not found" in proc.stderr
    assert (tmp_path / "out" / "compile_error.log").is_file()
    assert "neuronx-distributed-inference is not importable" in proc.stderr
    assert "NOT_COMPILED (False, '', {'error':" in proc.stdout and "run compile_model first" in proc.stdout


class _Stream:
    def __init__(self, terminal: bool):
        self.terminal, self.written = terminal, []

    def isatty(self):
        return self.terminal

    def write(self, text):
        self.written.append(text)

    def flush(self):
        pass


@pytest.mark.parametrize("terminal", [True, False])
def test_progress_goes_to_the_real_terminal_and_is_quiet_elsewhere(monkeypatch, terminal):
    from pytest_autoport import progress as module
    from pytest_autoport.progress import progress

    stream = _Stream(terminal)
    monkeypatch.setattr(sys, "__stderr__", stream)
    monkeypatch.setattr(module, "_open_tty", lambda: None)  # as in CI: no controlling terminal
    assert list(progress(range(3), desc="compile llama")) == [0, 1, 2]
    assert bool(stream.written) is terminal
    assert not terminal or any("compile llama" in text for text in stream.written)
