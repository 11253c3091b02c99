"""Bad input is caught at load with one line naming the file and field; a port that delegates to the
HF model fails its model check instead of passing every stage."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import forked_pytest
import pytest

from pytest_autoport.errors import SpecError
from pytest_autoport.spec import Component, find_spec_file, load_spec
from pytest_autoport.spec_checks import check_tiny_keys, spec_warnings
from tests.helpers import bundled_specs

REPO = Path(__file__).resolve().parents[2]
LLAMA_SPEC = (REPO / "port_specs" / "llama.toml").read_text()


def _llama_spec(tmp_path: Path, old: str = "", new: str = "") -> Path:
    assert old in LLAMA_SPEC
    spec = tmp_path / "port_specs" / "llama.toml"
    spec.parent.mkdir(exist_ok=True)
    spec.write_text(LLAMA_SPEC.replace(old, new, 1))
    if not (tmp_path / "neuron_port").exists():
        (tmp_path / "neuron_port").symlink_to(REPO / "neuron_port")
    return spec


def _load_error(spec: Path) -> SpecError:
    with pytest.raises(SpecError) as info:
        load_spec(spec, spec.parent.parent, check_imports=False)
    assert str(spec) in str(info.value) and "\n" not in str(info.value)
    return info.value


# -- caught by load_spec ------------------------------------------------------------------------------
@pytest.mark.parametrize("blank", ["", "   ", "\\n\\t"])
def test_empty_prompt_is_named(tmp_path, blank):
    spec = _llama_spec(tmp_path, '"To bake a loaf of bread, mix flour, water,"', f'"{blank}"')
    error = _load_error(spec)
    assert error.field == "validation.prompts[1]"
    assert "is empty" in error.problem


@pytest.mark.parametrize("name", ["../escape", "sub/llama", "/abs/llama", "..", ".", "a\\\\b", ""])
def test_model_name_with_a_path_is_rejected(tmp_path, name):
    spec = _llama_spec(tmp_path, 'name = "llama"', f'name = "{name}"')
    error = _load_error(spec)
    assert error.field == "model.name"
    assert "not a plain name" in error.problem


def test_plain_model_names_are_accepted(tmp_path):
    spec = _llama_spec(tmp_path, 'name = "llama"', 'name = "Llama-3.2_1B+int8"')
    assert load_spec(spec, tmp_path, check_imports=False).name == "Llama-3.2_1B+int8"


@pytest.mark.parametrize("given", ["port_specs", "port_specs/", "{root}/port_specs", "empty_dir"])
def test_folder_given_as_spec_names_the_folder(tmp_path, given):
    _llama_spec(tmp_path)
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(SpecError) as info:
        find_spec_file(given.format(root=tmp_path), tmp_path)
    folder = tmp_path / given.format(root=tmp_path).rstrip("/").rpartition("/")[2]
    assert str(info.value).startswith(f"{folder}: is a folder, not a spec file")
    assert ("specs in it: llama.toml" in str(info.value)) == (given != "empty_dir")


def test_spec_name_beside_a_same_named_folder_still_resolves(tmp_path):
    spec = _llama_spec(tmp_path)
    (tmp_path / "llama").mkdir()
    assert find_spec_file("llama", tmp_path) == spec


def test_folder_as_spec_is_a_usage_error(pytester):
    (pytester.path / "port_specs").mkdir()
    (pytester.path / "port_specs" / "llama.toml").write_text(LLAMA_SPEC)
    result = forked_pytest.runpytest(pytester, "--autoport-model=port_specs/", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*port_specs: is a folder, not a spec file*specs in it: llama.toml*"])
    assert "Traceback" not in result.stderr.str()


# -- [tiny] keys ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec_file", [p.name for p in bundled_specs()])
def test_bundled_tiny_keys_are_accepted(spec_file):
    check_tiny_keys(load_spec(REPO / "port_specs" / spec_file, REPO, check_imports=False))


@pytest.mark.parametrize(
    ("old", "new", "field", "hint"),
    [
        ("hidden_size = 64", "hiden_size = 64", "tiny.hiden_size", "did you mean 'hidden_size'"),
        ("train_steps = 300", "train_step = 300", "tiny.train_step", "did you mean 'train_steps'"),
        ("rms_norm_eps = 1e-5", "rms_norm_eps = 1e-5\ncolour = 3", "tiny.colour", ""),
        ('model_type = "llama"', 'model_type = "lama"', "tiny.model_type", "did you mean 'llama'"),
    ],
)
def test_unknown_tiny_key_is_named(tmp_path, old, new, field, hint):
    spec = load_spec(_llama_spec(tmp_path, old, new), tmp_path, check_imports=False)
    with pytest.raises(SpecError) as info:
        check_tiny_keys(spec)
    assert info.value.field == field
    assert hint in info.value.problem


# -- checks against the tokenizer and the model config (at collection) ---------------------------------
@pytest.fixture
def llama_session(tiny_weights):
    from pytest_autoport.session import AutoportSession, Options

    def make(**changes):
        spec = load_spec(REPO / "port_specs" / "llama.toml", REPO, check_imports=False)
        spec = dataclasses.replace(
            spec, model=dataclasses.replace(spec.model, weights_path=str(tiny_weights("llama")))
        )
        for table, values in changes.items():
            spec = dataclasses.replace(spec, **{table: values(getattr(spec, table))})
        return AutoportSession(spec, Options(artifacts_dir=Path("/nonexistent")))

    return make


def test_bundled_llama_inputs_pass(llama_session):
    llama_session().check_inputs()


def test_prompt_plus_tokens_beyond_max_seq_len(llama_session):
    long = "The lighthouse keeper climbed the spiral stairs " * 3
    session = llama_session(
        validation=lambda v: dataclasses.replace(v, prompts=[v.prompts[0], long], num_tokens_to_check=24)
    )
    length = len(session.tokenizer(long)["input_ids"])
    assert length <= 64 < length + 24  # the case: fits the buckets, not with the tokens to check
    with pytest.raises(SpecError) as info:
        session.check_inputs()
    assert info.value.field == "validation.num_tokens_to_check"
    assert (
        f"validation.prompts[1] has {length} tokens; + 24 tokens to generate = {length + 24}, "
        "more than port.max_seq_len (64)"
    ) == info.value.problem


def test_prompt_beyond_largest_bucket(llama_session):
    long = "The lighthouse keeper climbed the spiral stairs " * 12
    session = llama_session(validation=lambda v: dataclasses.replace(v, prompts=[long]))
    with pytest.raises(SpecError) as info:
        session.check_inputs()
    assert info.value.field == "validation.prompts[0]"
    assert "do not fit the largest context bucket (64)" in info.value.problem


@pytest.mark.parametrize("layers", [[0, 2], [-3], ["first", 7]])
def test_layer_index_out_of_range(llama_session, layers):
    session = llama_session(
        components=lambda comps: [
            c if c.name != "mlp" else dataclasses.replace(c, layers=layers) for c in comps
        ]
    )
    with pytest.raises(SpecError) as info:
        session.check_inputs()
    index = next(n for n, c in enumerate(session.spec.components) if c.name == "mlp")
    assert info.value.field == f"components[{index}].layers"
    bad = next(e for e in layers if isinstance(e, int) and not -2 <= e < 2)
    assert f"layer {bad} of component 'mlp' does not exist: the model has 2 layers" in info.value.problem


def test_negative_layer_indices_in_range_pass(llama_session):
    session = llama_session(
        components=lambda comps: [Component("mlp", "model.layers.{i}.mlp", layers=[-1, -2])]
    )
    session.check_inputs()


def test_bad_layer_fails_collection_in_one_line(port_project):
    port_project.edit_spec(
        'hf_module = "model.layers.{i}.mlp"', 'hf_module = "model.layers.{i}.mlp"\nlayers = [5]'
    )
    result = port_project.run()
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert (
        f"{port_project.spec}: field 'components[4].layers': layer 5 of component 'mlp' does not exist: "
        "the model has 2 layers (0..1, or -2..-1)"
    ) in result.stdout.lines
    assert "Traceback" not in result.stdout.str()
    assert port_project.results()["stages"] == []


def test_a_spec_that_does_not_load_says_so_in_the_header_and_names_the_key(port_project):
    port_project.edit_spec("max_seq_len = 64", "max_seq_len = 64\ntoken_generation_bucket = [64]")
    result = port_project.run()
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(
        [
            f"autoport: spec {port_project.spec} does not load (the error follows)",
            "*field 'port.token_generation_bucket': unknown key; did you mean 'token_generation_buckets'?*",
        ]
    )
    assert "unknown target" not in result.stdout.str() and "target ?" not in result.stdout.str()


# -- no [[components]] ----------------------------------------------------------------------------------
def test_no_components_warns_in_the_verdict(port_project):
    text = port_project.spec.read_text()
    port_project.spec.write_text(
        text[: text.index("[[components]]")] + text[text.index("# When weights_path") :]
    )
    assert spec_warnings(load_spec(port_project.spec, port_project.root, check_imports=False))
    result = port_project.run("--autoport-dry-run")
    result.stdout.fnmatch_lines(["warning: no component checks: add *", "verdict: *"])
    data = port_project.results()  # a dry run's verdict is partial: results/llama.partial.json
    assert data["warnings"] and data["warnings"][0].startswith("no component checks")
    assert not any(s["stage"] == "component" for s in data["stages"])


# -- a port that delegates to the HF model ---------------------------------------------------------------
DELEGATING_FORWARD = """

import torch as _torch
import transformers as _transformers

_init = NeuronLlamaForCausalLM.__init__
_forward = NeuronLlamaForCausalLM.forward


def _delegating_init(self, config):
    _init(self, config)
    nc = config.neuron_config
    shape = (nc.batch_size, nc.max_seq_len)
    self.register_buffer("history_cache", _torch.zeros(shape, dtype=_torch.long), persistent=False)
    self.kv_cache_names = ("history_cache",)  # declared: the KV-cache check at weights stays silent
    self._hf = [None]  # a plain list: the HF model stays outside the module tree


def _delegating_forward(self, input_ids, position_ids, cache_len=None):
    _forward(self, input_ids, position_ids, cache_len)  # its own caches fill; its logits are dropped
    if self._hf[0] is None:
        path = self.config._name_or_path
        self._hf[0] = _transformers.LlamaForCausalLM.from_pretrained(path).eval()
    self.history_cache.scatter_(1, position_ids, input_ids)
    logits = self._hf[0](self.history_cache, use_cache=False).logits.float()
    index = position_ids[..., None].expand(-1, -1, logits.shape[-1])
    return logits.gather(1, index)


NeuronLlamaForCausalLM.__init__ = _delegating_init
NeuronLlamaForCausalLM.forward = _delegating_forward
"""


def test_port_delegating_to_the_hf_model_fails(port_project):
    port_file = port_project.root / "neuron_port" / "llama" / "modeling_llama.py"
    port_file.write_text(port_file.read_text() + DELEGATING_FORWARD)
    result = port_project.run("-k", "not compile and not generate and not golden")
    statuses = port_project.statuses()
    assert statuses["weights"] == "passed"
    components = [s for sid, s in statuses.items() if sid.startswith("component[")]
    assert components and set(components) == {"passed"}
    for model in ("model", "model[bfloat16]"):
        assert statuses[model] == "failed"
        message = port_project.stage(model)["message"]
        assert message.startswith(
            "the port calls transformers.models.llama.modeling_llama.LlamaForCausalLM (a transformers model, "
            f"called from {port_file}:"
        )
        assert "which is not part of its module tree" in message
        assert "first divergent module" not in message
    assert result.ret == 1
    assert "Traceback" not in result.stdout.str()
