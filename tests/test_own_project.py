"""The README's "port your own model" path, exactly as a user takes it: the harness installed (not the
repository on the path) into a folder outside the repository, a spec and a port written there, run."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SPEC = """\
[model]
name = "mine"
hf_model_class = "LlamaForCausalLM"
model_id = "my-org/my-llama"
weights_path = "{weights}"

[port]
model_class = "neuron_port/mine/modeling_mine.py:NeuronLlamaForCausalLM"
max_seq_len = 64
context_buckets = [16, 64]
token_generation_buckets = [64]

[validation]
prompts = ["The lighthouse keeper climbed the spiral stairs"]
num_tokens_to_check = 8

[[components]]
name = "input_norm"
hf_module = "model.layers.{{i}}.input_layernorm"

[[components]]
name = "mlp"
hf_module = "model.layers.{{i}}.mlp"
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The harness as pip installs it (no dependencies: those come from the running interpreter)."""
    site = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            site,
            REPO,
        ],
        check=True,
        capture_output=True,
    )
    return site


def test_a_port_in_the_users_project_imports_the_installed_blocks(installed, tmp_path, tiny_weights):
    assert (installed / "pytest_autoport" / "blocks" / "norms.py").exists()
    assert not (installed / "neuron_port").exists()  # the user's own neuron_port/ must not be shadowed
    project = tmp_path / "project"
    (project / "neuron_port" / "mine").mkdir(parents=True)
    port = (REPO / "neuron_port" / "llama" / "modeling_llama.py").read_text()
    (project / "neuron_port" / "mine" / "modeling_mine.py").write_text(port)
    checkpoint = tmp_path / "my-checkpoint"  # the user's own: no marker of the harness's tiny builds
    shutil.copytree(tiny_weights("llama"), checkpoint, ignore=shutil.ignore_patterns("autoport_tiny.json"))
    (project / "port_specs").mkdir()
    (project / "port_specs" / "mine.toml").write_text(SPEC.format(weights=checkpoint))
    env = {**os.environ, "PYTHONPATH": str(installed)}
    env.pop("AUTOPORT_BLOCKS_PATH", None)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--autoport-model=mine",
            "-p",
            "no:cacheprovider",
            "-k",
            "weights or mlp or norm",
        ],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "verdict: PARTIAL, PASSED" in run.stdout  # -k selects some stages: a partial verdict
    assert str(REPO) not in run.stdout  # nothing came from the repository


def test_checkpoint_folder_parts_are_named(tmp_path):
    from pytest_autoport.checkpoint_folder import folder_problem, missing_files

    assert missing_files(tmp_path) == [
        "config.json",
        "weights (*.safetensors)",
        "tokenizer files (one of tokenizer.json, tokenizer.model, spiece.model, vocab.json, vocab.txt, "
        "tokenizer.tiktoken)",
    ]
    (tmp_path / "pytorch_model.bin").write_text("")  # a format the harness does not read: named as such
    assert "holds pytorch_model*.bin, which the harness does not read" in missing_files(tmp_path)[1]
    for name in ("config.json", "model.safetensors", "tokenizer.model"):
        (tmp_path / name).write_text("")
    assert folder_problem(tmp_path) is None


def test_own_checkpoint_without_tokenizer_fails_once_at_weights(make_project, tiny_weights, tmp_path):
    checkpoint = tmp_path / "no-tokenizer"
    shutil.copytree(
        tiny_weights("llama"),
        checkpoint,
        ignore=shutil.ignore_patterns("autoport_tiny.json", "tokenizer*"),
    )
    project = make_project("llama")
    text = project.spec.read_text()
    project.spec.write_text(re.sub(r'weights_path = ".*"', f'weights_path = "{checkpoint}"', text))
    result = project.run("-k", "weights or mlp-layer0")
    assert result.ret == 1
    weights = project.stage("weights")
    assert weights["status"] == "failed"
    assert "lacks tokenizer files (one of tokenizer.json" in weights["message"]
    assert project.statuses()["component[mlp-layer0]"] == "skipped"
    output = result.stdout.str()
    assert "Traceback" not in output and "sentencepiece" not in output
    assert len(output.splitlines()) < 150
