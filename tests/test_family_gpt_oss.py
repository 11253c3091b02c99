"""The GPT-OSS port end to end on an MXFP4 tiny checkpoint (sinks, sliding/full layers, YaRN, clamped
SwiGLU experts with biases): the correct port passes every stage; a dequantisation that reads the FP4
nibbles in the wrong order, and attention that ignores the sliding window, fail where they should."""

from __future__ import annotations

import pytest

from tests.helpers import decoder_components

FILE = "gpt_oss/modeling_gpt_oss.py"
COMPONENTS = decoder_components(
    "input_norm", "attention", "post_attention_norm", "router", "mlp", "decoder_layer"
)


@pytest.fixture
def project(make_project):
    return make_project("gpt_oss")


def test_correct_port_passes_every_stage(project):
    figures = project.assert_passes_every_stage(project.run(), COMPONENTS)
    assert figures["component[mlp-layer0]"]["rel_fro"] < 1e-6  # dequantised exactly as the reference


# (old, new, failing component, first divergent module, a component that still passes, every failing
# component)
BUGS = {
    # The weights stage cannot see it: every block and scale is read and the shapes are right. The values
    # are wrong, and the first module that uses them is the mixture of experts of layer 0.
    "mxfp4_nibbles_swapped": (
        "torch.stack((blocks & 0x0F, blocks >> 4), dim=-1)",
        "torch.stack((blocks >> 4, blocks & 0x0F), dim=-1)",
        "mlp-layer0",
        "model.layers.0.mlp",
        "router-layer0",
        ("mlp-layer0", "mlp-layer1", "decoder_layer-layer0", "decoder_layer-layer1"),
    ),
    # layer 0 slides, layer 1 attends to everything
    "sliding_window_ignored": (
        "self.sliding_window = config.sliding_window if sliding else None",
        "self.sliding_window = None",
        "attention-layer0",
        "model.layers.0.self_attn",
        "attention-layer1",
        ("attention-layer0", "decoder_layer-layer0"),
    ),
}


@pytest.mark.parametrize("bug", list(BUGS))
def test_planted_bug_fails_at_its_component(project, bug):
    old, new, failing, first_divergent, still_passing, every_failure = BUGS[bug]
    project.replace(FILE, old, new, what=bug)
    project.assert_caught(
        project.run("-k", "not bfloat16"),
        failing=(failing,),
        passing=(still_passing,),
        first_divergent=first_divergent,
        failing_exactly=(*(f"component[{c}]" for c in every_failure), "model"),
    )


@pytest.mark.parametrize("truncate", [False, True], ids=["gpt_oss_yarn", "truncated_yarn"])
def test_rope_tables_match_hf_for_the_real_config(truncate):
    """The tiny model's head_dim is 16; the real one's is 64 (and other checkpoints truncate YaRN's ramp)."""
    torch = pytest.importorskip("torch")
    from transformers import GptOssConfig
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssRotaryEmbedding

    from pytest_autoport.blocks.gpt_oss_rope import ScaledRotaryEmbedding

    config = GptOssConfig()  # gpt-oss-20b / 120b attention and RoPE settings
    config.rope_parameters["truncate"] = truncate
    positions = torch.tensor([[0, 1, 127, 4095, 131071]])
    cos, sin = GptOssRotaryEmbedding(config)(torch.zeros(1), positions)
    port_cos, port_sin = ScaledRotaryEmbedding(config, config.head_dim)(positions, torch.float32)
    assert torch.allclose(port_cos, torch.cat((cos, cos), dim=-1), rtol=0, atol=1e-6)
    assert torch.allclose(port_sin, torch.cat((sin, sin), dim=-1), rtol=0, atol=1e-6)
