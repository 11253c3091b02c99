"""``autoport scaffold``: a spec and a port that load, build and convert at once, for every bundled
family and for architectures that are not bundled; the weights check names what the skeleton lacks."""

from __future__ import annotations

from pathlib import Path

import forked_pytest
import pytest

from tests.helpers import bundled_specs

REPO = Path(__file__).resolve().parents[1]
SMALL = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4}
NOT_BUNDLED = {
    "phi3": {**SMALL, "partial_rotary_factor": 0.5, "sliding_window": 32},
    "qwen2": {**SMALL, "num_key_value_heads": 2},
    "olmo2": SMALL,
}
# the skeleton is the common decoder: these convert with every tensor used
COMPLETE = {"phi3", "qwen2", "llama", "mistral"}
YARN = {"deepseek", "gpt_oss"}


def _bundled() -> dict[str, tuple[str, dict]]:
    from transformers import AutoConfig

    from pytest_autoport.spec import load_spec
    from pytest_autoport.spec_checks import HARNESS_TINY_KEYS

    out = {}
    for path in bundled_specs():
        spec = load_spec(path, REPO, check_imports=False)
        if spec.port.target == "torch" and spec.model.name != "llama_int8":
            known = AutoConfig.for_model(spec.tiny["model_type"])
            # keys of the bundled spec that the installed config reads (GPT-OSS's swiglu_limit is read by
            # the bundled port, not by transformers 4.57's config, nor by a scaffolded skeleton)
            tiny = {k: v for k, v in spec.tiny.items() if k not in HARNESS_TINY_KEYS and hasattr(known, k)}
            out[spec.model.name] = (spec.tiny["model_type"], tiny)
    return out


CASES = {**{name: (name, overrides) for name, overrides in NOT_BUNDLED.items()}, **_bundled()}
# the encoder-decoders (T5) are scaffolded in tests/test_scaffold_targets.py
DECODER_CASES = sorted(name for name, (model_type, _) in CASES.items() if model_type != "t5")


@pytest.mark.parametrize("name", DECODER_CASES)
def test_scaffolded_port_loads_builds_and_converts(name, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from pytest_autoport.hygiene import check_port, hf_class_names
    from pytest_autoport.scaffold import scaffold
    from pytest_autoport.spec import import_port_class, load_spec
    from pytest_autoport.spec_checks import HARNESS_TINY_KEYS, check_tiny_keys
    from pytest_autoport.targets.torch_target import TorchTarget
    from pytest_autoport.weight_mapping import check_mapping

    model_type, overrides = CASES[name]
    spec_file, port_file = scaffold(model_type, f"my_{name}", tmp_path, overrides=overrides)
    spec = load_spec(spec_file, tmp_path)
    check_tiny_keys(spec)
    assert [c.name for c in spec.components][:1] == ["embedding"]
    from transformers import AutoConfig

    tiny = {k: v for k, v in spec.tiny.items() if k not in HARNESS_TINY_KEYS}
    config = AutoConfig.for_model(model_type, **tiny, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(config)
    if name in YARN:  # the skeleton's rotary block names what it lacks; the TODO says which block to use
        assert "YarnRotaryEmbedding" in port_file.read_text()
        with pytest.raises(NotImplementedError, match="RoPE scaling type 'yarn'"):
            TorchTarget().build_port(spec, config, torch.float32)
        return
    port = TorchTarget().build_port(spec, config, torch.float32)
    convert = import_port_class(spec).convert_hf_to_neuron_state_dict
    report = check_mapping(convert, hf.state_dict(), port.config, port.state_dict())
    if name in COMPLETE:
        assert report.ok, report.message()
    else:
        assert not report.ok and report.message()  # the weights stage names the tensors the skeleton lacks
    hygiene = check_port([port_file], hf_class_names(spec.model.hf_model_class), {})
    assert all(v.rule == "class-name" for v in hygiene)


def test_scaffold_refuses_to_overwrite_and_names_bad_input(tmp_path, capsys):
    from pytest_autoport.cli import main

    args = ["scaffold", "qwen2", "--name", "mine", "--root", str(tmp_path), "--set", "num_hidden_layers=2"]
    assert main(args) == 0
    spec_text = (tmp_path / "port_specs" / "mine.toml").read_text()
    assert main(args) == 2
    assert "exists: scaffold never overwrites" in capsys.readouterr().err
    assert (tmp_path / "port_specs" / "mine.toml").read_text() == spec_text
    assert main(["scaffold", "qwen2", "--name", "My-Port", "--root", str(tmp_path)]) == 2
    assert main(["scaffold", "t5", "--name", "x", "--target", "nxdi", "--root", str(tmp_path)]) == 2
    assert "the nxdi target runs decoder-only models" in capsys.readouterr().err
    assert not (tmp_path / "neuron_port" / "x").exists()


def test_scaffold_uses_a_checkpoint_folder_as_weights(tmp_path, tiny_weights):
    import shutil

    from pytest_autoport.scaffold import scaffold

    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_weights("llama"), folder, ignore=shutil.ignore_patterns("autoport_tiny.json"))
    spec_file, _ = scaffold(str(folder), "mine", tmp_path / "project")
    text = spec_file.read_text()
    assert f'weights_path = "{folder}"' in text and "[tiny]" not in text


def test_scaffolded_phi3_project_collects_and_runs(pytester):
    """Straight from scaffold to pytest: the spec collects and the target-free stages pass."""
    from pytest_autoport.scaffold import scaffold

    overrides = {"partial_rotary_factor": 0.5, "sliding_window": 32}
    spec_file, _ = scaffold("phi3", "phi3", pytester.path, overrides=overrides)
    spec_file.write_text(
        spec_file.read_text().replace('model_type = "phi3"', 'model_type = "phi3"\nweights = "random"')
    )
    result = forked_pytest.runpytest(
        pytester, "--autoport-model=phi3", "-p", "no:cacheprovider", "--autoport-dry-run"
    )
    assert result.ret == 0, result.stdout.str()[-3000:]
    result.stdout.fnmatch_lines(["preflight *passed*", "hygiene *passed*", "weights *passed*"])
