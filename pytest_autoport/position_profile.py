"""How a failing output's error spreads over sequence positions, from the tensors already compared
(no extra forward pass). A wrong RoPE leaves position 0 exact and grows with position; a wrong
projection, scale or layout is off by about as much at position 0 as anywhere."""

from __future__ import annotations

import math

import torch

GROWTH_CAP = 1e6  # position_growth when the first positions are exact and the later ones are not


def position_profile(actual, expected, reference_lp=None) -> dict:
    """Per-position error of ``[batch, seq, ...]`` outputs: the relative error ``||a_p - e_p|| / ||e_p||``
    (FP32), or the ratio ``||a_p - e_p|| / ||ref_lp_p - e_p||`` (low precision, ``reference_lp`` given),
    and two figures derived from it: ``position_growth``, the mean error of the last half of the
    positions over that of the first eighth (at least two), and ``position0_share``, position 0's
    error over the mean.
    Empty for outputs without a sequence dimension or with non-finite values."""
    if actual.dim() < 3 or actual.shape[1] < 4 or tuple(actual.shape) != tuple(expected.shape):
        return {}
    a, e = actual.detach().double(), expected.detach().double()
    if not (torch.isfinite(a).all() and torch.isfinite(e).all()):
        return {}
    error = _norm_per_position(a - e)
    if reference_lp is not None:
        scale = _norm_per_position(reference_lp.detach().double() - e)
    else:
        scale = _norm_per_position(e)
    tiny = torch.finfo(torch.float64).tiny
    return profile_figures((error / scale.clamp_min(tiny)).tolist())


def profile_figures(per_position: list[float]) -> dict:
    """``position_error`` (rounded), ``position_growth`` and ``position0_share`` from a per-position
    error list."""
    per_position = [min(v, GROWTH_CAP) for v in per_position]
    seq = len(per_position)
    early = sum(per_position[: max(2, seq // 8)]) / max(2, seq // 8)
    late = per_position[seq // 2 :]
    mean = sum(per_position) / seq
    return {
        "position_error": [_round(v) for v in per_position],
        "position_growth": _ratio(sum(late) / len(late), early),
        "position0_share": _ratio(per_position[0], mean),
    }


def _norm_per_position(t: torch.Tensor) -> torch.Tensor:
    return t.transpose(0, 1).reshape(t.shape[1], -1).norm(dim=1)


def _ratio(top: float, bottom: float) -> float:
    if bottom <= 1e-12 * max(abs(top), 1.0):
        return GROWTH_CAP if top > 0 else 1.0
    return _round(min(top / bottom, GROWTH_CAP))


def _round(value: float) -> float:
    return float(f"{value:.4g}") if math.isfinite(value) else value
