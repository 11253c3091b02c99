"""The Qwen3-MoE port end to end: the correct port (sparse layers 0 and 2, dense layer 1) passes every
stage; a routing bug and an expert-weight bug fail at the MoE components, leave the dense layer's MLP
alone, and the model check names the first MoE block as the first divergent module."""

from __future__ import annotations

import pytest

FIRST_AND_LAST = ("input_norm", "q_norm", "k_norm", "attention", "post_attention_norm", "router", "experts")
COMPONENTS = [
    "embedding",
    # per-layer checks run in the first and last layers; layer 1 is dense: no router or experts there
    *(f"{name}-layer{i}" for name in FIRST_AND_LAST for i in (0, 2)),
    "mlp-layer0",
    "mlp-layer1",
    "mlp-layer2",
    "decoder_layer-layer0",
    "decoder_layer-layer2",
    "norm",
    "lm_head",
]


def test_correct_port_passes_every_stage(make_project):
    project = make_project("qwen3_moe")
    project.assert_passes_every_stage(project.run(), COMPONENTS)


@pytest.mark.parametrize(
    ("file", "correct", "buggy", "failing"),
    [
        pytest.param(
            # with norm_topk_prob off (the tiny config), a softmax over the top-k logits alone is wrong
            "blocks/moe.py",
            "probs = torch.softmax(router_logits.float(), dim=-1)\n"
            "    top_k_weights, top_k_index = torch.topk(probs, top_k, dim=-1)",
            "top_k_logits, top_k_index = torch.topk(router_logits.float(), top_k, dim=-1)\n"
            "    top_k_weights = torch.softmax(top_k_logits, dim=-1)",
            "mlp-layer0",
            id="softmax_over_top_k_logits",
        ),
        pytest.param(
            "qwen3_moe/modeling_qwen3_moe.py",
            '"gate_proj", "up_proj", "down_proj"',
            '"up_proj", "gate_proj", "down_proj"',
            "experts-layer0",
            id="expert_gate_up_swapped",
        ),
    ],
)
def test_moe_bug_fails_at_its_component(make_project, file, correct, buggy, failing):
    project = make_project("qwen3_moe")
    project.replace(file, correct, buggy)
    # the experts check feeds both sides HF's routing: only expert bugs fail it
    experts = ("experts-layer0",)
    expert_bug = failing.startswith("experts")
    sparse = ("mlp-layer0", "mlp-layer2", "decoder_layer-layer0", "decoder_layer-layer2")
    sparse += ("experts-layer0", "experts-layer2") if expert_bug else ()
    project.assert_caught(
        project.run("-k", "not bfloat16"),
        failing_exactly=(*(f"component[{c}]" for c in sparse), "model"),
        failing=("mlp-layer0", "mlp-layer2", *(experts if expert_bug else ())),
        # the gate's logits are still right; the dense layer 1 has no experts
        passing=("router-layer0", "mlp-layer1", *(experts if not expert_bug else ())),
        # localisation runs each model on its own routing, so a routing bug shows in the experts' output too
        first_divergent=("model.layers.0.mlp.experts", "model.layers.0.mlp"),
    )
