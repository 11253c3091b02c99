"""The DeepSeek V3 port end to end (multi-latent attention, YaRN, routed + shared experts): the correct
port passes every stage; each planted MLA bug fails at attention and is localised there. Plus quick
direct checks of what the tiny spec does not reach: YaRN against HF's own rope functions, and MLA
without the query bottleneck (q_lora_rank None) and without interleaved RoPE."""

from __future__ import annotations

import pytest

FILE = "deepseek/modeling_deepseek.py"
COMPONENTS = [
    "embedding",
    "attention-layer0",
    "attention-layer1",
    "mlp-layer0",
    "moe-layer1",
    "decoder_layer-layer0",
    "decoder_layer-layer1",
    "norm",
    "lm_head",
]

# (old, new) replacements planting one bug each
MSCALE_IGNORED = [
    (
        "self.scaling = yarn_softmax_scale(self.qk_head_dim, scaling, max_positions)",
        "self.scaling = self.qk_head_dim**-0.5",
    )
]
ROPE_ON_WHOLE_HEAD = [
    (
        "YarnRotaryEmbedding(self.qk_rope_head_dim, theta",
        "YarnRotaryEmbedding(self.qk_head_dim, theta",
    ),
    ("        q_rope = self.rotate(q_rope, cos, sin)\n        k_rope = self.rotate(k_rope, cos, sin)\n", ""),
    (
        "        query = torch.cat((q_nope, q_rope), dim=-1)\n",
        "        query = self.rotate(torch.cat((q_nope, q_rope), dim=-1), cos, sin)\n"
        "        keys = self.rotate(keys, *self.rotary_emb(torch.arange(slots)[None], keys.dtype))\n",
    ),
]


@pytest.fixture
def project(make_project):
    return make_project("deepseek")


def test_correct_port_passes_every_stage(project):
    project.assert_passes_every_stage(project.run(), COMPONENTS)


@pytest.mark.parametrize(
    "bug", [MSCALE_IGNORED, ROPE_ON_WHOLE_HEAD], ids=["mscale_ignored", "rope_on_whole_head"]
)
def test_planted_mla_bug_fails_at_attention(project, bug):
    for old, new in bug:
        project.replace(FILE, old, new)
    project.assert_caught(
        project.run("-k", "not bfloat16"),
        failing=("attention-layer0",),
        passing=("mlp-layer0",),
        first_divergent="model.layers.0.self_attn",
        failing_exactly=(
            *(f"component[{name}-layer{i}]" for name in ("attention", "decoder_layer") for i in (0, 1)),
            "model",
        ),
    )


@pytest.mark.parametrize(
    "rope",
    [
        {"factor": 40.0, "original_max_position_embeddings": 4096, "mscale": 1.0, "mscale_all_dim": 1.0},
        {"factor": 4.0, "original_max_position_embeddings": 32, "mscale": 0.8, "mscale_all_dim": 1.0},
        {"factor": 8.0, "original_max_position_embeddings": 64, "beta_fast": 16, "truncate": False},
        {
            "factor": None,
            "original_max_position_embeddings": 32,
            "attention_factor": 1.3,
            "mscale_all_dim": 0.707,
        },
    ],
)
def test_yarn_matches_hf(rope):
    torch = pytest.importorskip("torch")
    from transformers import AutoConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import yarn_apply_mscale

    from pytest_autoport.blocks.yarn import yarn_inv_freq, yarn_softmax_scale

    params = {"rope_type": "yarn", "rope_theta": 10000.0, **rope}
    config = AutoConfig.for_model(
        "deepseek_v3", qk_rope_head_dim=64, max_position_embeddings=256, rope_parameters=params
    )
    hf_inv_freq, hf_factor = ROPE_INIT_FUNCTIONS["yarn"](config)
    inv_freq, factor = yarn_inv_freq(64, 10000.0, config.rope_parameters, 256)
    torch.testing.assert_close(inv_freq, hf_inv_freq, rtol=1e-6, atol=0)
    assert factor == pytest.approx(hf_factor)
    if rope["factor"] is not None:  # HF's attention-side mscale reads "factor" directly
        expected = yarn_apply_mscale(config.rope_parameters, 192**-0.5)
        assert yarn_softmax_scale(192, config.rope_parameters, 256) == pytest.approx(expected)


def test_attention_without_query_bottleneck_or_interleave():
    """V2-Lite style MLA (one q_proj) with rotate-half RoPE, checked directly against HF in FP32."""
    torch = pytest.importorskip("torch")
    import transformers

    from neuron_port.deepseek.modeling_deepseek import NeuronDeepseekV3Attention
    from pytest_autoport.targets.torch_target import TorchNeuronConfig

    config = transformers.AutoConfig.for_model(
        "deepseek_v3", hidden_size=64, num_attention_heads=4, num_key_value_heads=4, q_lora_rank=None,
        kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, rope_interleave=False,
        rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                         "original_max_position_embeddings": 32, "mscale": 0.707, "mscale_all_dim": 0.707},
        max_position_embeddings=128,
    )  # fmt: skip
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    hf = transformers.models.deepseek_v3.modeling_deepseek_v3.DeepseekV3Attention(config, 0).eval()
    for p in hf.parameters():
        torch.nn.init.normal_(p, std=0.2)
    rotary = transformers.models.deepseek_v3.modeling_deepseek_v3.DeepseekV3RotaryEmbedding(config)
    config.neuron_config = TorchNeuronConfig(1, 32, (32,), torch.float32)
    port = NeuronDeepseekV3Attention(config)
    port.load_state_dict(hf.state_dict())
    assert not hasattr(port, "q_a_proj")

    hidden, positions = torch.randn(1, 20, 64), torch.arange(20)[None]
    mask = torch.full((20, 20), torch.finfo(torch.float32).min).triu(1)[None, None]
    with torch.no_grad():
        expected = hf(hidden, rotary(hidden, positions), mask)[0]
        actual = port(hidden, positions)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)
