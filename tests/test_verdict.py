"""The plugin end to end on the bundled Llama port: a correct port passes every stage; each planted
bug fails at the stage that should catch it, names the culprit, and skips what depends on it."""

from __future__ import annotations

import pytest

from tests.helpers import LLAMA_LAYER_COMPONENTS, decoder_components

COMPONENTS = decoder_components(*LLAMA_LAYER_COMPONENTS)


def test_correct_port_passes_every_stage(llama_verdict):
    result = llama_verdict.result
    figures = llama_verdict.assert_passes_every_stage(result, COMPONENTS)
    data = llama_verdict.results()
    assert data["model"] == "llama" and data["target"] == "torch"
    assert data["weights"]["kind"] == "tiny-trained"
    assert figures["generate"]["decode_tokens_per_s"] > 0
    assert figures["compile"]["graphs"] == 5  # three context-encoding and two token-generation buckets
    result.stdout.fnmatch_lines(
        ["*autoport verdict*", "verdict: PASSED (llama, target torch, tiny-trained weights)"]
    )
    summary = (llama_verdict.root / "agent_artifacts" / "traces" / "port_summary.md").read_text()
    assert "**PASSED**" in summary and "`golden`" in summary
    # hints come only with failures: a correct port's run names no likely cause anywhere
    assert "likely cause" not in result.stdout.str() and "likely cause" not in summary
    assert not any("likely_cause" in f for f in figures.values())


def in_both_dtypes(*components: str) -> tuple[str, ...]:
    """The stage ids of ``components`` checked in FP32 and in bf16, and of both model checks: a logic
    bug is caught in both modes (swapped_gate_up fails mlp-layer0 and mlp-layer0-bfloat16)."""
    ids = [f"component[{c}{suffix}]" for suffix in ("", "-bfloat16") for c in components]
    return (*ids, "model", "model[bfloat16]")


BOTH_LAYERS = ("decoder_layer-layer0", "decoder_layer-layer1")


@pytest.mark.parametrize(
    ("bug", "failing", "first_divergent", "every_failure"),
    [
        (
            "rope_theta",
            "attention-layer0",
            "model.layers.0.self_attn",
            in_both_dtypes("attention-layer0", "attention-layer1", *BOTH_LAYERS),
        ),
        (
            "rope_scaling_dropped",
            "attention-layer0",
            "model.layers.0.self_attn",
            in_both_dtypes("attention-layer0", "attention-layer1", *BOTH_LAYERS),
        ),
        (
            "swapped_gate_up",
            "mlp-layer0",
            "model.layers.0.mlp",
            in_both_dtypes("mlp-layer0", "mlp-layer1", *BOTH_LAYERS),
        ),
        ("missing_residual", "decoder_layer-layer0", "model.layers.0", in_both_dtypes(*BOTH_LAYERS)),
        (
            "layernorm_for_rmsnorm",
            "input_norm-layer0",
            "model.layers.0.input_layernorm",
            in_both_dtypes(
                "input_norm-layer0",
                "input_norm-layer1",
                "post_attention_norm-layer0",
                "post_attention_norm-layer1",
                *BOTH_LAYERS,
                "norm",
            ),
        ),
    ],
    ids=[
        "rope_theta",
        "rope_scaling_dropped",
        "swapped_gate_up",
        "missing_residual",
        "layernorm_for_rmsnorm",
    ],
)
def test_planted_logic_bug_fails_at_its_component(port_project, bug, failing, first_divergent, every_failure):
    port_project.plant(bug)
    port_project.assert_caught(
        port_project.run(),
        failing=(failing,),
        passing=("embedding",),
        first_divergent=first_divergent,
        failing_exactly=every_failure,
    )
    cause = {"rope_theta": "attention_and_rope", "swapped_gate_up": "mlp_and_fused_weights"}
    cause["rope_scaling_dropped"] = "attention_and_rope"
    cause.update(missing_residual="accuracy_debugging", layernorm_for_rmsnorm="norms")
    message = port_project.stage(f"component[{failing}]")["message"]
    assert "likely cause: " in message and message.endswith(f"(kb/{cause[bug]}.md)")
    # the decoder layer around the bug: its message alone says "decoder layer"; the RoPE bug's error
    # growing with position names attention (a metric signature), the others' flat error does not
    around = "attention_and_rope" if bug.startswith("rope_") else "accuracy_debugging"
    for dtype in ("", "-bfloat16"):
        layer = port_project.stage(f"component[decoder_layer-layer0{dtype}]")
        assert layer["message"].endswith(f"(kb/{around}.md)"), layer["message"]
        assert layer["figures"]["likely_cause"]["file"] == f"kb/{around}.md"
    if bug.startswith("rope_"):
        assert "the error grows with position" in layer["message"]
        assert layer["figures"]["position_growth"] >= 4 and layer["figures"]["position_error"][0] < 1.5
    assert "prerequisite stage model did not pass" in port_project.stage("compile")["message"]


def test_wrong_weight_key_fails_weights_and_names_the_key(port_project):
    port_project.plant("wrong_weight_key")
    result = port_project.run()
    assert result.ret == 1
    statuses = port_project.statuses()
    assert statuses["weights"] == "failed"
    downstream = [s for s in statuses if s not in ("env", "preflight", "hygiene", "weights")]
    assert {"component[embedding]", "model", "golden"} <= set(downstream)
    assert all(statuses[s] == "skipped" for s in downstream)
    message = {s["id"]: s["message"] for s in port_project.results()["stages"]}["weights"]
    assert "HF tensors the conversion never used (1)" in message
    assert "model.layers.0.self_attn.q_proj.weight" in message
    result.stdout.fnmatch_lines(["*model.layers.0.self_attn.q_proj.weight*"])


def test_k_selects_one_component(port_project):
    result = port_project.run("-k", "mlp and not bfloat16")
    result.assert_outcomes(passed=2)
    assert [s["id"] for s in port_project.results()["stages"]] == [
        "component[mlp-layer0]",
        "component[mlp-layer1]",
    ]
    # the weights stage did not run, yet the verdict names the checkpoint it judged
    assert port_project.results()["weights"]["kind"] == "tiny-trained"
    result.stdout.fnmatch_lines(["verdict: PARTIAL, PASSED (*, tiny-trained weights)"])


def test_second_run_reuses_compiled_artifact(llama_verdict, compiled_port_project):
    first = llama_verdict.stage("compile")["figures"]  # the run that built the artifacts copied here
    compiled_port_project.run("-k", "compile").assert_outcomes(passed=1)
    second = compiled_port_project.stage("compile")["figures"]
    assert first["compiled"] is True and second["compiled"] is False
    assert first["key"] == second["key"]
