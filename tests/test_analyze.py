"""``autoport analyze`` and the ``preflight`` stage: built on the meta device from a config alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import bundled_specs

REPO = Path(__file__).resolve().parents[1]
PHI3 = {
    "num_hidden_layers": 2,
    "hidden_size": 64,
    "intermediate_size": 100,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "vocab_size": 302,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "partial_rotary_factor": 0.5,
    "sliding_window": 32,
    "pad_token_id": 0,
}


def test_phi3_fused_weights_partial_rope_and_window_are_named():
    from pytest_autoport.analyze import analyze, load_config, preflight

    report = analyze(load_config("phi3", PHI3))
    assert report["attention"] == {"kind": "MHA", "heads": 4, "kv_heads": 4, "head_dim": 16}
    assert report["mlp"]["fused"] == ["gate_up_proj", "qkv_proj"]
    assert report["positional"]["partial_rotary_factor"] == 0.5
    assert report["sliding_window"]["window"] == 32
    assert len(report["custom_work"]) == 3
    norm = next(m for m in report["modules"] if m["hf_class"] == "Phi3RMSNorm")
    assert norm["torch"] == "pytest_autoport.blocks.norms.RMSNorm"
    problems = preflight(report, tp_degree=3, seq_len=64, port_text="")
    assert problems == [
        "4 attention heads do not split over tp 3",
        "4 KV heads neither split over nor replicate to tp 3",
        "vocab_size 302 does not split over tp 3: pad it or shard another way",
        "intermediate_size 100 does not split over tp 3: pad it or shard another way",
        "sliding window 32 < sequence length 64, but the port never reads sliding_window",
        "config key 'partial_rotary_factor' changes the model, but the port never reads it",
    ]
    assert preflight(report, tp_degree=2, seq_len=64, port_text="sliding_window partial_rotary_factor") == []
    gemma = load_config("gemma2", {"num_hidden_layers": 2, "attn_logit_softcapping": 50.0})
    problems = preflight(analyze(gemma), port_text="", config=gemma)
    assert "config key 'attn_logit_softcapping' changes the model, but the port never reads it" in problems


@pytest.mark.parametrize(
    ("model_type", "overrides", "attention", "extra"),
    [
        ("qwen2", {"num_key_value_heads": 2, "num_attention_heads": 4}, "GQA", "q_proj"),
        ("olmo2", {}, "MHA", "q_norm"),
        ("mixtral", {"num_key_value_heads": 1}, "MQA", "experts"),
        ("deepseek_v3", {}, "MLA", "kv_a_proj_with_mqa"),
    ],
)
def test_other_architectures(model_type, overrides, attention, extra):
    from pytest_autoport.analyze import analyze, load_config

    base = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 96, "num_attention_heads": 4}
    base.update({"vocab_size": 128, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2})
    report = analyze(load_config(model_type, {**base, **overrides}))
    assert report["attention"]["kind"] == attention
    if model_type == "mixtral":
        assert report["moe"]["experts"] == 8 and report["moe"]["top_k"] == 2
    if model_type == "olmo2":
        assert report["qk_norm"] is True


def test_cli_reads_a_config_file_and_prints_json(tmp_path, capsys):
    from pytest_autoport.cli import main

    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_type": "phi3", **PHI3}))
    assert main(["analyze", str(config), "--json", "--tp", "2"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model_type"] == "phi3" and report["preflight"]["problems"] == []
    assert (
        main(["analyze", "phi3", "--set", "num_attention_heads=3", "--set", "hidden_size=48", "--tp", "2"])
        == 1
    )
    assert "3 attention heads do not split over tp 2" in capsys.readouterr().out
    assert main(["analyze", str(tmp_path / "nowhere")]) == 2
    assert "neither a folder, a config.json nor a transformers model type" in capsys.readouterr().err


@pytest.mark.parametrize("name", [p.stem for p in bundled_specs()])
def test_preflight_is_silent_on_every_bundled_spec(name):
    from pytest_autoport.analyze import analyze, load_config, preflight
    from pytest_autoport.spec import load_spec
    from pytest_autoport.spec_checks import HARNESS_TINY_KEYS
    from pytest_autoport.stages.compile import port_sources

    spec = load_spec(REPO / "port_specs" / f"{name}.toml", REPO, check_imports=False)
    tiny = {k: v for k, v in spec.tiny.items() if k not in HARNESS_TINY_KEYS}
    config = load_config(spec.tiny["model_type"], tiny)
    report = analyze(config)
    text = "\n".join(p.read_text() for p in port_sources(spec.port_class_file.parent))
    assert preflight(report, spec.port.tp_degree, spec.port.max_seq_len, text, config) == []


def test_expert_parallel_preflight():
    """ep_degree: the experts and tp_degree must divide by it, and a dense model has nothing to split."""
    from pytest_autoport.analyze import analyze, load_config, preflight

    moe = analyze(load_config("mixtral", {"num_local_experts": 6, "num_hidden_layers": 1}))
    assert preflight(moe, tp_degree=4, ep_degree=2) == []
    assert preflight(moe, tp_degree=4, ep_degree=4) == ["6 experts do not split over ep 4"]
    assert preflight(moe, tp_degree=2, ep_degree=3) == [
        "tp_degree 2 is not a multiple of ep_degree 3 (each expert group gets tp/ep cores)"
    ]
    dense = analyze(load_config("llama", {"num_hidden_layers": 1}))
    assert preflight(dense, tp_degree=2, ep_degree=2) == [
        "ep_degree 2 applies to mixture-of-experts models; this one has no experts"
    ]


def test_ep_degree_reaches_the_nxdi_device_config_only(tmp_path):
    """On the device NxDI's MoE modules read moe_ep_degree and moe_tp_degree = tp / ep; CPU mode runs
    every expert in one process. A bad ep_degree names its field."""
    import dataclasses

    import torch

    from pytest_autoport.errors import SpecError
    from pytest_autoport.spec import load_spec
    from pytest_autoport.targets.nxdi.config import neuron_config_kwargs

    spec = load_spec(REPO / "port_specs" / "qwen3_nxdi.toml", REPO, check_imports=False)
    spec = dataclasses.replace(spec, port=dataclasses.replace(spec.port, ep_degree=2))
    device = neuron_config_kwargs(spec, torch.bfloat16, tp_degree=8, on_cpu=False)
    assert (device["moe_ep_degree"], device["moe_tp_degree"], device["tp_degree"]) == (2, 4, 8)
    cpu = neuron_config_kwargs(spec, torch.bfloat16, tp_degree=1, on_cpu=True)
    assert "moe_ep_degree" not in cpu and "moe_tp_degree" not in cpu

    text = (REPO / "port_specs" / "llama.toml").read_text().replace("[port]\n", "[port]\nep_degree = 0\n", 1)
    (tmp_path / "bad.toml").write_text(text)
    with pytest.raises(SpecError, match=r"port\.ep_degree.*at least 1"):
        load_spec(tmp_path / "bad.toml", REPO, check_imports=False)
