"""``autoport validate`` and ``autoport spec-from-validation-config``: the Autoport validation JSON
becomes a spec, and the staged verdict judges it (exit 0 / 1, 2 for a bad config)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from pytest_autoport.spec import load_spec
from pytest_autoport.validate_command import (
    DEFAULT_PROMPTS,
    ConfigError,
    components_from_spec,
    spec_from_validation_config,
)

REPO = Path(__file__).resolve().parents[1]
LLAMA_CLASS = "neuron_port/llama/modeling_llama.py:NeuronLlamaForCausalLM"


def llama_config(weights: Path, **extra) -> dict:
    """The bundled Llama spec as the Autoport documents write it."""
    return {
        "model_name": "llama",
        "model_class": LLAMA_CLASS,
        "config_class": LLAMA_CLASS,
        "model_path": str(weights),
        "compiled_model_path": "agent_artifacts/data/compiled_model",
        "tp_degree": 1,
        "num_tokens_to_check": 24,
        "test_parameters": [{"batch_size": 1, "seq_len": 64}, {"batch_size": 2, "seq_len": 32}],
        **extra,
    }


def fake_checkpoint(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    return folder


def convert(tmp_path: Path, data: dict, **kwargs):
    source = tmp_path / "validation_config.json"
    text = spec_from_validation_config(data, source, REPO, **kwargs)
    out = tmp_path / "spec.toml"
    out.write_text(text)
    return load_spec(out, REPO, check_imports=False)


def test_validation_json_becomes_the_equivalent_spec(tmp_path):
    weights = fake_checkpoint(tmp_path / "ckpt")
    components = components_from_spec("llama", REPO)
    thresholds = {"batch_size": 2, "seq_len": 32, "max_ttft_s": 5, "min_tokens_per_s": 1.5}
    data = llama_config(weights, test_parameters=[{"batch_size": 1, "seq_len": 64}, thresholds])
    spec = convert(tmp_path, data, components=components)
    bundled = load_spec(REPO / "port_specs" / "llama.toml", REPO, check_imports=False)
    assert spec.name == "llama" and spec.model.hf_model_class == "LlamaForCausalLM"
    assert spec.weights_dir == weights.resolve()
    assert spec.port_class_file == (REPO / LLAMA_CLASS.split(":")[0]).resolve()
    assert (spec.port.batch_size, spec.port.max_seq_len, spec.port.target) == (1, 64, "torch")
    assert spec.validation.num_tokens_to_check == 24 and spec.validation.prompts == DEFAULT_PROMPTS
    assert spec.components == bundled.components
    assert spec.generation.max_ttft_s == 0  # the first entry has no thresholds
    assert (spec.port.tp_degree, spec.port.ep_degree) == (1, 1)
    assert convert(tmp_path, {**data, "tp_degree": 4, "ep_degree": 2}).port.ep_degree == 2

    picked = convert(tmp_path, data, batch_size=2, seq_len=32)
    assert (picked.port.batch_size, picked.port.max_seq_len) == (2, 32)
    assert (picked.generation.max_ttft_s, picked.generation.min_tokens_per_s) == (5, 1.5)
    assert picked.components == []


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"model_path": None}, "model_path"),
        ({"model_class": "NeuronLlama"}, "model_class"),
        ({"num_tokens_to_check": "many"}, "num_tokens_to_check"),
        ({"ep_degree": "two"}, "ep_degree"),
        ({"test_parameters": [{"batch_size": 0, "seq_len": 64}]}, "test_parameters[0].batch_size"),
    ],
)
def test_bad_field_is_named(tmp_path, change, field):
    data = llama_config(fake_checkpoint(tmp_path / "ckpt"))
    for key, value in change.items():
        data.pop(key) if value is None else data.__setitem__(key, value)
    with pytest.raises(ConfigError) as info:
        convert(tmp_path, data)
    assert info.value.field == field and "validation_config.json" in str(info.value)


@pytest.fixture(autouse=True)
def _this_checkout_first(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))


def _cli(pytester, *args):
    """``autoport`` in a fresh interpreter."""
    return pytester.run(sys.executable, "-m", "pytest_autoport.cli", *args, timeout=600)


def test_bad_config_exits_2_naming_file_and_field(pytester):
    (pytester.path / "v.json").write_text(json.dumps({"model_name": "x", "model_class": LLAMA_CLASS}))
    result = _cli(pytester, "validate", "--config", "v.json")
    assert result.ret == 2
    assert "v.json: field 'model_path': missing required field" in result.stderr.str()
    assert not (pytester.path / "agent_artifacts" / "tmp" / "validation").exists()


def test_spec_from_validation_config_writes_a_loadable_spec(pytester, port_project, tiny_weights):
    project = port_project
    (project.root / "v.json").write_text(json.dumps(llama_config(tiny_weights("llama"))))
    result = _cli(
        pytester, "spec-from-validation-config", "--config", "v.json", "--spec", "llama", "-o", "out.toml"
    )
    assert result.ret == 0, result.stderr.str()
    spec = load_spec(project.root / "out.toml", project.root)
    assert spec.name == "llama" and len(spec.components) == 8


@pytest.mark.slow
def test_validate_passes_the_bundled_llama_and_catches_a_planted_bug(pytester, port_project, tiny_weights):
    project = port_project
    (project.root / "v.json").write_text(json.dumps(llama_config(tiny_weights("llama"))))
    args = ("validate", "--config", "v.json", "--mode", "all", "--batch-size", "1", "--seq-len", "64")
    result = _cli(pytester, *args, "--spec", "llama")
    assert result.ret == 0, result.stdout.str()[-3000:]
    results = project.results()
    assert results["passed"] is True
    golden = next(s for s in results["stages"] if s["id"] == "golden")
    assert golden["figures"]["mode"] == "all" and golden["figures"]["logit_check_passed"] is True
    report = project.root / "agent_artifacts" / "results" / "llama.html"
    assert f"report: {report}" in result.stdout.str()
    assert "id='stages'" in report.read_text()

    project.plant("rope_theta")
    result = _cli(pytester, *args, "--spec", "llama")
    assert result.ret == 1
    out = result.stdout.str()
    assert "first divergent module: model.layers.0.self_attn" in out
    assert "verdict: FAILED" in out
    assert project.stage("golden")["status"] == "skipped"
