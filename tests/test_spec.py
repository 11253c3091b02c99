"""Bad specs fail at collection with one message naming the file and the field, no traceback."""

from __future__ import annotations

from pathlib import Path

import forked_pytest
import pytest

from pytest_autoport.errors import SpecError
from pytest_autoport.spec import find_spec_file, load_spec

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("old", "new", "field", "problem"),
    [
        ("batch_size = 1", 'batch_size = "one"', "port.batch_size", "expected an integer"),
        ('dtype = "float32"', 'dtype = "float8"', "port.dtype", "unknown dtype"),
        ("max_seq_len = 64", "max_seq_len = 64\ncolour = 3", "port.colour", "unknown key; expected one of"),
        (
            "max_seq_len = 64",
            "max_seq_len = 64\ntoken_generation_bucket = [64]",
            "port.token_generation_bucket",
            "unknown key; did you mean 'token_generation_buckets'?",
        ),
        ('hf_model_class = "LlamaForCausalLM"\n', "", "model.hf_model_class", "missing required field"),
        (
            "context_buckets = [16, 32, 64]",
            "context_buckets = [32, 16, 64]",
            "port.context_buckets",
            "increasing",
        ),
        (
            "token_generation_buckets = [32, 64]",
            "token_generation_buckets = [32]",
            "port.token_generation_buckets",
            "the last bucket must be max_seq_len",
        ),
        (
            '[[components]]\nname = "mlp"',
            '[[components]]\nname = "attention"',
            "components[4].name",
            "duplicate",
        ),
        (
            'hf_module = "model.layers.{i}.mlp"\n',
            'hf_module = "model.layers.{i}.mlp"\nr_band = [0.5, 1.5]\n',
            "components[4].r_band_reason",
            "overriding r_band needs a written reason",
        ),
        (
            'hf_module = "model.layers.{i}.mlp"\n',
            'hf_module = "model.layers.{i}.mlp"\nr_band = [0.5, 1.5]\nr_band_reason = "  "\n',
            "components[4].r_band_reason",
            "overriding r_band needs a written reason",
        ),
        (
            ':NeuronLlamaForCausalLM"',
            ':NoSuchClass"',
            "port.model_class",
            "defines no 'NoSuchClass'",
        ),
    ],
)
def test_bad_field_is_named(tmp_path, old, new, field, problem):
    text = (REPO / "port_specs" / "llama.toml").read_text()
    assert old in text
    spec = tmp_path / "port_specs" / "llama.toml"
    spec.parent.mkdir()
    spec.write_text(text.replace(old, new, 1))
    (tmp_path / "neuron_port").symlink_to(REPO / "neuron_port")
    with pytest.raises(SpecError) as info:
        load_spec(spec, tmp_path)
    assert str(spec) in str(info.value)
    assert info.value.field == field
    assert problem in info.value.problem


def test_band_override_with_a_reason_loads(tmp_path):
    text = (REPO / "port_specs" / "llama.toml").read_text()
    spec = tmp_path / "llama.toml"
    spec.write_text(
        text.replace(
            'hf_module = "model.layers.{i}.mlp"\n',
            'hf_module = "model.layers.{i}.mlp"\nr_band = [0.5, 1.5]\nr_band_reason = "fused kernel"\n',
            1,
        )
    )
    mlp = next(c for c in load_spec(spec, REPO, check_imports=False).components if c.name == "mlp")
    assert mlp.r_band == [0.5, 1.5] and mlp.r_band_reason == "fused kernel"


def test_toml_syntax_error(tmp_path):
    spec = tmp_path / "bad.toml"
    spec.write_text("[model\nname = 'x'")
    with pytest.raises(SpecError, match="invalid TOML"):
        load_spec(spec, tmp_path)


def test_port_import_error_is_one_line(tmp_path):
    text = (REPO / "port_specs" / "llama.toml").read_text()
    (tmp_path / "port_specs").mkdir()
    (tmp_path / "port_specs" / "llama.toml").write_text(text)
    port = tmp_path / "neuron_port" / "llama"
    port.mkdir(parents=True)
    (port / "modeling_llama.py").write_text("import no_such_module_here\n")
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path / "port_specs" / "llama.toml", tmp_path)
    assert info.value.field == "port.model_class"
    assert "ModuleNotFoundError: No module named 'no_such_module_here'" in str(info.value)


def test_unknown_spec_name_lists_available(tmp_path):
    (tmp_path / "port_specs").mkdir()
    (tmp_path / "port_specs" / "llama.toml").write_text("")
    with pytest.raises(SpecError, match=r"specs in port_specs/: llama"):
        find_spec_file("mistral", tmp_path)


def test_bad_spec_fails_collection_cleanly(port_project):
    port_project.edit_spec("batch_size = 1", 'batch_size = "one"')
    result = port_project.run()
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*llama.toml: field 'port.batch_size': expected an integer, got str 'one'*"])
    assert "Traceback" not in result.stdout.str()
    data = port_project.results()
    assert data["passed"] is False and "port.batch_size" in data["error"]


def test_missing_spec_is_a_usage_error(pytester):
    result = forked_pytest.runpytest(pytester, "--autoport-model=nothere")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*nothere.toml: no such spec file*"])
