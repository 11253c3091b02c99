"""The shared RoPE block against transformers' own rotary module: default, linear and llama3 scaling give
HF's cos/sin at every position; a scaling the block lacks, or a config with settings per kind of layer
read without saying which, stops with a message naming it."""

from __future__ import annotations

import pytest
import torch

from pytest_autoport.blocks.rope import RotaryEmbedding, rope_parameters

SCALINGS = {
    "default": None,
    "linear": {"rope_type": "linear", "factor": 4.0},
    "llama3": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    },
}


def _llama_config(scaling):
    import transformers
    from transformers import LlamaConfig

    rope = {"rope_theta": 50000.0, **(scaling or {"rope_type": "default"})}
    if int(transformers.__version__.split(".")[0]) >= 5:
        return LlamaConfig(
            hidden_size=64, num_attention_heads=2, max_position_embeddings=512, rope_parameters=rope
        )
    return LlamaConfig(
        hidden_size=64,
        num_attention_heads=2,
        max_position_embeddings=512,
        rope_theta=50000.0,
        rope_scaling=scaling,
    )


@pytest.mark.parametrize("kind", sorted(SCALINGS))
def test_rotary_tables_equal_transformers_at_every_position(kind):
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    config = _llama_config(SCALINGS[kind])
    theta, scaling = rope_parameters(config)
    assert theta == 50000.0
    assert (scaling or {}).get("rope_type") == (None if kind == "default" else kind)
    positions = torch.arange(300)[None]
    cos, sin = RotaryEmbedding(32, theta, scaling)(positions, torch.float32)
    hf_cos, hf_sin = LlamaRotaryEmbedding(config)(torch.zeros(1, dtype=torch.float32), positions)
    torch.testing.assert_close(cos, hf_cos, rtol=0, atol=1e-6)
    torch.testing.assert_close(sin, hf_sin, rtol=0, atol=1e-6)


def test_a_scaling_the_block_lacks_is_named():
    with pytest.raises(NotImplementedError, match="RoPE scaling type 'dynamic' is not supported"):
        RotaryEmbedding(32, 10000.0, {"rope_type": "dynamic", "factor": 2.0})


def test_settings_per_layer_type_need_the_layer_type():
    config = type("Gemma3LikeConfig", (), {})()
    config.rope_parameters = {
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
    }
    config.rope_scaling, config.rope_theta = None, 1000000.0
    import transformers

    if int(transformers.__version__.split(".")[0]) < 5:
        pytest.skip("transformers 4.x reads rope_scaling and rope_theta, one setting for every layer")
    with pytest.raises(ValueError, match=r"per layer type \(full_attention, sliding_attention\).*layer_type"):
        rope_parameters(config)
    assert rope_parameters(config, "sliding_attention") == (10000.0, None)
    theta, scaling = rope_parameters(config, "full_attention")
    assert theta == 1000000.0 and scaling["factor"] == 8.0


def test_partial_rotation_is_read_where_transformers_reads_it():
    from types import SimpleNamespace

    from transformers import Phi3Config

    from pytest_autoport.blocks.rope import partial_rotary_factor

    assert partial_rotary_factor(Phi3Config(partial_rotary_factor=0.5)) == 0.5
    assert partial_rotary_factor(Phi3Config()) == 1.0
    import transformers

    if int(transformers.__version__.split(".")[0]) >= 5:
        # a transformers 5 config.json holds it in rope_parameters only
        only_rope = SimpleNamespace(
            rope_parameters={"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.25}
        )
        assert partial_rotary_factor(only_rope) == 0.25
    else:
        assert partial_rotary_factor(SimpleNamespace(partial_rotary_factor=0.25, rope_scaling=None)) == 0.25
