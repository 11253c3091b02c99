"""RoPE as GPT-OSS configures it: YaRN-scaled frequencies, and cos/sin multiplied by YaRN's attention factor.

Apply the tables with ``pytest_autoport.blocks.rope.apply_rotary`` (rotate-half layout).
"""

import math

import torch
from torch import nn

from .rope import hf_rope_settings


def _rope_params(config) -> dict:
    """The RoPE settings as the installed transformers reads them (see ``hf_rope_settings``)."""
    params = hf_rope_settings(config)
    params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    params.setdefault("rope_type", params.get("type", "default"))
    return params


def yarn_inv_freq(head_dim: int, params: dict, max_position_embeddings: int) -> tuple[torch.Tensor, float]:
    """YaRN: keep the fast-rotating dimensions, divide the slow ones by ``factor``, ramp linearly in between."""
    base = params["rope_theta"]
    original = params["original_max_position_embeddings"]
    factor = params.get("factor") or max_position_embeddings / original

    def mscale(scale, m=1.0):
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention_factor = params.get("attention_factor")
    if attention_factor is None:
        if params.get("mscale") and params.get("mscale_all_dim"):
            attention_factor = mscale(factor, params["mscale"]) / mscale(factor, params["mscale_all_dim"])
        else:
            attention_factor = mscale(factor)

    def dim_for(rotations):  # the dimension that turns ``rotations`` times over the original context
        return head_dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = dim_for(params.get("beta_fast") or 32), dim_for(params.get("beta_slow") or 1)
    if params.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001

    exponents = base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp  # 1: the original frequency (extrapolate), 0: divided by factor (interpolate)
    inv_freq = (1 / (factor * exponents)) * (1 - keep) + (1 / exponents) * keep
    return inv_freq, float(attention_factor)


class ScaledRotaryEmbedding(nn.Module):
    """cos/sin tables [batch, seq, head_dim] by position id, for the default and YaRN RoPE types."""

    def __init__(self, config, head_dim: int):
        super().__init__()
        params = _rope_params(config)
        if params.get("partial_rotary_factor", 1.0) != 1.0:
            raise NotImplementedError("partial rotary embeddings are not supported by this port")
        if params["rope_type"] == "yarn":
            inv_freq, self.attention_factor = yarn_inv_freq(head_dim, params, config.max_position_embeddings)
        elif params["rope_type"] == "default":
            inv_freq = 1.0 / (
                params["rope_theta"] ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
            )
            self.attention_factor = 1.0
        else:
            raise NotImplementedError(f"RoPE type {params['rope_type']!r} is not supported by this port")
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids.float()[..., None] * self.inv_freq
        angles = torch.cat((freqs, freqs), dim=-1)
        cos, sin = angles.cos() * self.attention_factor, angles.sin() * self.attention_factor
        return cos.to(dtype), sin.to(dtype)
