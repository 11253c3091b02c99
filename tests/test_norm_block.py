"""The RMSNorm block in either order of scaling and casting, as ``autoport analyze`` names it."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.parametrize("model_type", ["olmo2", "llama"])
def test_the_rms_norm_block_matches_hf_in_bf16_in_either_scaling_order(model_type):
    """OLMo 2 multiplies by the weight in float32 before casting back, Llama after: ``autoport analyze``
    names the block's setting for each, and the block so set is exact in bf16."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from pytest_autoport.analyze import module_map
    from pytest_autoport.blocks.norms import RMSNorm

    config = AutoConfig.for_model(
        model_type,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=4,
        vocab_size=64,
    )
    model = AutoModelForCausalLM.from_config(config)
    row = next(r for r in module_map(model) if "RMSNorm" in r["hf_class"])
    in_float32 = model_type == "olmo2"
    assert row["torch"].endswith("RMSNorm(scale_in_float32=True)") is in_float32
    hf = model.get_submodule(row["hf_module"])
    torch.manual_seed(0)
    with torch.no_grad():
        hf.weight.copy_(1 + 0.3 * torch.randn_like(hf.weight))
    block = RMSNorm(64, hf.variance_epsilon, scale_in_float32=in_float32)
    block.load_state_dict(hf.state_dict())
    x = (3 * torch.randn(2, 9, 64)).bfloat16()
    assert torch.equal(block.bfloat16()(x), hf.bfloat16()(x))
