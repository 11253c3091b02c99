"""The Qwen3 port end to end (per-head q/k RMSNorm before RoPE): the correct port passes every stage;
a q/k norm moved after RoPE, or left out, fails at attention and the model check localises it."""

from __future__ import annotations

import pytest

from tests.helpers import decoder_components

FILE = "qwen3/modeling_qwen3.py"
COMPONENTS = decoder_components(
    "input_norm", "q_norm", "k_norm", "attention", "post_attention_norm", "mlp", "decoder_layer"
)
PROJECTIONS = (
    "        q = self.q_norm(self.q_proj(hidden_states).view(heads)).transpose(1, 2)\n"
    "        k = self.k_norm(self.k_proj(hidden_states).view(heads)).transpose(1, 2)\n"
)
UNNORMED = (
    "        q = self.q_proj(hidden_states).view(heads).transpose(1, 2)\n"
    "        k = self.k_proj(hidden_states).view(heads).transpose(1, 2)\n"
)
ROPE = "        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)\n"
# q/k norm applied to the rotated heads ([batch, seq, heads, head_dim] kept, so only the order is wrong)
NORM_AFTER_ROPE = [
    (PROJECTIONS, UNNORMED),
    (
        ROPE,
        ROPE + "        q = self.q_norm(q.transpose(1, 2)).transpose(1, 2)\n"
        "        k = self.k_norm(k.transpose(1, 2)).transpose(1, 2)\n",
    ),
]
NORM_MISSING = [(PROJECTIONS, UNNORMED)]


@pytest.fixture
def project(make_project):
    return make_project("qwen3")


def test_correct_port_passes_every_stage(project):
    project.assert_passes_every_stage(project.run(), COMPONENTS)


@pytest.mark.parametrize(
    ("bug", "first_divergent"),
    [
        # the norm module itself is right (its component passes) but sees rotated input
        (NORM_AFTER_ROPE, "model.layers.0.self_attn.q_norm"),
        # the norm never runs in the port, so the attention output is the first to differ
        (NORM_MISSING, "model.layers.0.self_attn"),
    ],
    ids=["qk_norm_after_rope", "qk_norm_missing"],
)
def test_planted_qk_norm_bug_fails_at_attention(project, bug, first_divergent):
    for old, new in bug:
        project.replace(FILE, old, new)
    project.assert_caught(
        project.run("-k", "not bfloat16"),
        failing=("attention-layer0",),
        passing=("q_norm-layer0", "mlp-layer0"),
        first_divergent=first_divergent,
        failing_exactly=(
            *(f"component[{name}-layer{i}]" for name in ("attention", "decoder_layer") for i in (0, 1)),
            "model",
        ),
    )
