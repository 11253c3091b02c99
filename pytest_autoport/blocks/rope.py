import math

import torch
from torch import nn


def _llama3_scaled(inv_freq: torch.Tensor, scaling: dict) -> torch.Tensor:
    """Llama 3.x frequency scaling: keep high frequencies, divide low ones, blend in between."""
    factor = scaling["factor"]
    low_wavelen = scaling["original_max_position_embeddings"] / scaling.get("low_freq_factor", 1.0)
    high_wavelen = scaling["original_max_position_embeddings"] / scaling.get("high_freq_factor", 4.0)
    wavelen = 2 * math.pi / inv_freq
    smooth = (scaling["original_max_position_embeddings"] / wavelen - scaling.get("low_freq_factor", 1.0)) / (
        scaling.get("high_freq_factor", 4.0) - scaling.get("low_freq_factor", 1.0)
    )
    blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    is_medium = (wavelen <= low_wavelen) & (wavelen >= high_wavelen)
    return torch.where(is_medium, blended, scaled)


def hf_rope_settings(config) -> dict:
    """The RoPE settings the installed transformers reads from ``config``: ``rope_parameters`` from 5.0
    on (for some models one dict per layer type), ``rope_scaling`` plus ``rope_theta`` before. A 4.x
    config may carry a ``rope_parameters`` entry that transformers 4.x ignores, so the port ignores it too."""
    import transformers

    if int(transformers.__version__.split(".")[0]) >= 5:
        return dict(getattr(config, "rope_parameters", None) or {})
    settings = dict(getattr(config, "rope_scaling", None) or {})
    settings.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    return settings


def rope_settings(config, layer_type: str | None = None) -> dict:
    """``hf_rope_settings`` of one kind of layer. A config with settings per kind of layer (Gemma 3 on
    transformers 5: ``{"full_attention": {...}, "sliding_attention": {...}}``) needs ``layer_type``; a
    config with one setting ignores it."""
    params = hf_rope_settings(config)
    per_type = {k: v for k, v in params.items() if isinstance(v, dict)}
    if not per_type:
        return params
    if layer_type not in per_type:
        raise ValueError(
            f"{type(config).__name__} has RoPE settings per layer type ({', '.join(sorted(per_type))}): "
            f"pass one of them as layer_type (got {layer_type!r})"
        )
    return per_type[layer_type]


def rope_parameters(config, layer_type: str | None = None) -> tuple[float, dict | None]:
    """(theta, scaling) from an HF config as the installed transformers reads it (None: no scaling);
    ``layer_type`` as for ``rope_settings``."""
    params = rope_settings(config, layer_type)
    theta = params.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    scaling = params if params.get("rope_type", params.get("type", "default")) != "default" else None
    return float(theta), scaling


def partial_rotary_factor(config, layer_type: str | None = None) -> float:
    """The share of each head that rotates, where the installed transformers reads it: the RoPE
    settings from 5.0 on (Phi-3), the config attribute before."""
    factor = rope_settings(config, layer_type).get("partial_rotary_factor")
    if factor is None:
        factor = getattr(config, "partial_rotary_factor", None)
    return float(factor or 1.0)


class RotaryEmbedding(nn.Module):
    """cos/sin tables for rotate-half RoPE, looked up by position id."""

    def __init__(self, head_dim: int, theta: float, scaling: dict | None = None):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        if scaling is not None:
            rope_type = scaling.get("rope_type", scaling.get("type"))
            if rope_type == "llama3":
                inv_freq = _llama3_scaled(inv_freq, scaling)
            elif rope_type == "linear":  # positions divided by the factor: every frequency divided by it
                inv_freq = inv_freq / scaling["factor"]
            else:
                raise NotImplementedError(f"RoPE scaling type {rope_type!r} is not supported by this port")
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids.float()[..., None] * self.inv_freq
        angles = torch.cat((freqs, freqs), dim=-1)
        return angles.cos().to(dtype), angles.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [batch, heads, seq, head_dim]; cos/sin: [batch, seq, head_dim]."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + _rotate_half(x) * sin
