"""The Gemma 3 text port end to end (scaled embeddings, (1 + weight) RMSNorms, q/k norms,
query_pre_attn_scalar, a sliding layer then a global one with linear RoPE scaling, final logit
soft-capping): the correct port passes every stage; planted Gemma bugs fail at the component that
owns them and the model check localises them."""

from __future__ import annotations

import pytest

from tests.helpers import decoder_components

FILE = "gemma3/modeling_gemma3.py"
NORMS = ("input_norm", "q_norm", "k_norm", "attention", "post_attention_norm", "pre_feedforward_norm")
COMPONENTS = decoder_components(*NORMS, "mlp", "post_feedforward_norm", "decoder_layer")


def test_correct_port_passes_every_stage(make_project):
    project = make_project("gemma3")
    project.assert_passes_every_stage(project.run(), COMPONENTS)


def fp32_ids(*components: str) -> tuple[str, ...]:
    """Stage ids of an FP32-only run's failures: these components, then the model check."""
    return (*(f"component[{c}]" for c in components), "model")


BOTH_LAYERS = ("decoder_layer-layer0", "decoder_layer-layer1")
EVERY_NORM = (
    "input_norm",
    "q_norm",
    "k_norm",
    "post_attention_norm",
    "pre_feedforward_norm",
    "post_feedforward_norm",
)


@pytest.mark.parametrize(
    ("file", "correct", "buggy", "failing", "first_divergent", "every_failure"),
    [
        (  # Llama's RMSNorm: scales by weight, not by 1 + weight
            "blocks/gemma_norm.py",
            "normed * (1.0 + self.weight.float())",
            "normed * self.weight.float()",
            "input_norm-layer0",
            "model.layers.0.input_layernorm",
            # every norm, the attention blocks (their q/k norms) and the layers; never the MLPs
            fp32_ids(
                *(f"{name}-layer{i}" for name in EVERY_NORM for i in (0, 1)),
                "attention-layer0",
                "attention-layer1",
                *BOTH_LAYERS,
                "norm",
            ),
        ),
        (  # the usual 1/sqrt(head_dim) instead of 1/sqrt(query_pre_attn_scalar)
            FILE,
            "self.scaling = config.query_pre_attn_scalar**-0.5",
            "self.scaling = self.head_dim**-0.5",
            "attention-layer0",
            "model.layers.0.self_attn",
            fp32_ids("attention-layer0", "attention-layer1", *BOTH_LAYERS),
        ),
    ],
    ids=["plain_rmsnorm", "head_dim_scaling"],
)
def test_planted_gemma_bug_fails_at_its_component(
    make_project, file, correct, buggy, failing, first_divergent, every_failure
):
    project = make_project("gemma3")
    project.replace(file, correct, buggy)
    project.assert_caught(
        project.run("-k", "not bfloat16"),
        failing=(failing,),
        passing=("embedding",),
        first_divergent=first_divergent,
        failing_exactly=every_failure,
    )


def test_sliding_window_ignored_fails_only_the_sliding_layer(make_project):
    project = make_project("gemma3")
    project.replace(
        FILE,
        'self.sliding_window = config.sliding_window if layer_type == "sliding_attention" else None',
        "self.sliding_window = None",
    )
    result = project.run("-k", "attention and not bfloat16")
    statuses = project.statuses()
    assert statuses["component[attention-layer0]"] == "failed"  # layer 0 slides over 8 positions
    assert statuses["component[attention-layer1]"] == "passed"  # layer 1 is global
    project.assert_failing_exactly(["component[attention-layer0]"])
    assert (
        "attention (layer 0) differs from HF in FP32"
        in project.stage("component[attention-layer0]")["message"]
    )
    assert result.ret == 1
