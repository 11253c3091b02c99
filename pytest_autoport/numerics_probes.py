"""Synthetic low-precision probes with the activation statistics of real models, and the row-gain ratio.

Pure functions on torch tensors; nothing here imports pytest.

A tiny model's activations are small and even, so a precision bug can hide inside the reference's own
rounding error. The probes feed a component inputs shaped like a real model's residual stream: a few
outlier channels about 100x the rest, and magnitudes in the hundreds.

:func:`gain_ratio` is the three-tensor ratio of the part of each error that scales a whole row (one
token's output vector). Elementwise rounding spreads over the row and projects onto it only weakly, while
an imprecise per-token statistic (an RMSNorm variance or rsqrt rounded to bf16) moves the whole row
together: that error is sub-ulp per element, so the plain ratio barely sees it, but it dominates the
projection.
"""

from __future__ import annotations

import math

import torch

from .numerics import to_float64

__all__ = ["PROBES", "gain_ratio", "probe_input"]

# name -> what it imitates (shown in figures and messages)
PROBES = {
    "outlier_channels": "2 outlier channels at 100x the rest",
    "large_residual": "residual-stream magnitudes in the hundreds",
}


def probe_input(kind: str, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """A seeded FP32 input of ``shape`` [..., hidden] with the statistics of probe ``kind``."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=generator)
    hidden = shape[-1]
    if kind == "outlier_channels":
        channels = torch.randperm(hidden, generator=generator)[: min(2, hidden)]
        x[..., channels] *= 100.0
    elif kind == "large_residual":
        x *= 300.0
    else:
        raise ValueError(f"unknown probe {kind!r}; known: {sorted(PROBES)}")
    return x


def _row_gain(actual: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    """Per row of the last dimension: the least-squares gain error ``<a - e, e> / <e, e>``."""
    denominator = (expected * expected).sum(-1).clamp_min(torch.finfo(torch.float64).tiny)
    return ((actual - expected) * expected).sum(-1) / denominator


def gain_ratio(port_lp, ref_lp, ref_fp32) -> float:
    """``||gain(port_lp)|| / ||gain(ref_lp)||`` with each row's gain error measured against ``ref_fp32``
    (1.0 when both are zero, inf when only the reference's is; nan on NaN/Inf)."""
    p, r, f = to_float64(port_lp), to_float64(ref_lp), to_float64(ref_fp32)
    if not (p.shape == r.shape == f.shape) or p.dim() == 0:
        raise ValueError(
            f"shape mismatch: port_lp {tuple(p.shape)}, ref_lp {tuple(r.shape)}, ref_fp32 {tuple(f.shape)}"
        )
    num = float(torch.linalg.vector_norm(_row_gain(p, f)))
    den = float(torch.linalg.vector_norm(_row_gain(r, f)))
    if math.isnan(num) or math.isnan(den):
        return math.nan
    if den == 0.0:
        return 1.0 if num == 0.0 else math.inf
    return num / den
