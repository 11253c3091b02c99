"""YaRN RoPE scaling: blended inverse frequencies, the cos/sin attention factor and the softmax mscale.

``scaling`` is the HF rope dict (``rope_parameters`` in transformers 5, ``rope_scaling`` in 4.x) with
``rope_type`` (or ``type``) "yarn": ``factor``, ``original_max_position_embeddings``, optional
``beta_fast``/``beta_slow``, ``mscale``/``mscale_all_dim``, ``attention_factor``, ``truncate``.
"""

import math

import torch
from torch import nn


def yarn_get_mscale(scale: float, mscale: float = 1.0) -> float:
    """YaRN's magnitude correction for a context stretched ``scale`` times."""
    if scale <= 1:
        return 1.0
    return 0.1 * mscale * math.log(scale) + 1.0


def yarn_factor(scaling: dict, max_position_embeddings: int | None = None) -> float:
    """The stretch factor; when absent, the ratio of the model's context to the pretraining one."""
    if scaling.get("factor") is not None:
        return float(scaling["factor"])
    return max_position_embeddings / scaling["original_max_position_embeddings"]


def yarn_inv_freq(
    dim: int, theta: float, scaling: dict, max_position_embeddings: int | None = None
) -> tuple[torch.Tensor, float]:
    """(inverse frequencies [dim // 2], cos/sin attention factor) for YaRN over ``dim`` rotary dims.

    Dimensions rotating fast over the pretraining context keep their frequency (extrapolation), slow
    ones are divided by the factor (interpolation), and a linear ramp blends the band in between.
    """
    factor = yarn_factor(scaling, max_position_embeddings)
    original = scaling["original_max_position_embeddings"]
    beta_fast = scaling.get("beta_fast") or 32
    beta_slow = scaling.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001

    base = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp  # 1: keep the original frequency, 0: interpolate
    inv_freq = base / factor * (1 - keep) + base * keep

    attention_factor = scaling.get("attention_factor")
    if attention_factor is None:
        mscale, mscale_all_dim = scaling.get("mscale"), scaling.get("mscale_all_dim")
        if mscale and mscale_all_dim:
            attention_factor = yarn_get_mscale(factor, mscale) / yarn_get_mscale(factor, mscale_all_dim)
        else:
            attention_factor = yarn_get_mscale(factor)
    return inv_freq, float(attention_factor)


def yarn_softmax_scale(
    head_dim: int, scaling: dict | None, max_position_embeddings: int | None = None
) -> float:
    """``head_dim ** -0.5``, times ``mscale(factor, mscale_all_dim) ** 2`` when the rope dict sets
    ``mscale_all_dim`` (DeepSeek V2/V3): the stretched context sharpens the softmax back."""
    scale = head_dim**-0.5
    if scaling and scaling.get("mscale_all_dim"):
        mscale = yarn_get_mscale(yarn_factor(scaling, max_position_embeddings), scaling["mscale_all_dim"])
        scale = scale * mscale * mscale
    return scale


class YarnRotaryEmbedding(nn.Module):
    """cos/sin tables ``[batch, seq, dim]`` laid out as ``cat(freqs, freqs)``, scaled by YaRN's
    attention factor; plain RoPE when ``scaling`` is None."""

    def __init__(
        self, dim: int, theta: float, scaling: dict | None = None, max_position_embeddings: int | None = None
    ):
        super().__init__()
        if scaling is None:
            inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
            self.attention_factor = 1.0
        else:
            rope_type = scaling.get("rope_type", scaling.get("type"))
            if rope_type != "yarn":
                raise NotImplementedError(f"RoPE scaling type {rope_type!r} is not supported by this port")
            inv_freq, self.attention_factor = yarn_inv_freq(dim, theta, scaling, max_position_embeddings)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids.float()[..., None] * self.inv_freq.float()
        angles = torch.cat((freqs, freqs), dim=-1)
        cos, sin = angles.cos() * self.attention_factor, angles.sin() * self.attention_factor
        return cos.to(dtype), sin.to(dtype)
