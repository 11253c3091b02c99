"""Numerical comparison of a port's outputs with the HuggingFace reference (DESIGN.md section 4).

Pure functions on torch tensors; nothing here imports pytest. Every figure is computed in float64 on the
CPU. NaN and Inf are never replaced or hidden: when either tensor holds them, the figures are computed over
the elements that are finite in both tensors (or set to nan when there are none) and ``Comparison.nonfinite``
says how many there are and where the first one is.

- FP32 strict: :func:`compare` then :func:`judge_strict` (relative Frobenius error against a tolerance).
- Low precision: :func:`three_tensor_ratio` ``R = ||port_lp - ref_fp32|| / ||ref_lp - ref_fp32||`` then
  :func:`judge_ratio` (R near 1 is healthy, above the band a bug, below it an extra upcast).
Token-level checks of the golden (token match, teacher forcing, the logit check) are in
``numerics_tokens``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

__all__ = [
    "Comparison",
    "Verdict",
    "compare",
    "judge_ratio",
    "judge_strict",
    "three_tensor_ratio",
    "to_float64",
]

_TINY = torch.finfo(torch.float64).tiny


def to_float64(x: Any) -> torch.Tensor:
    """A float64 CPU copy of ``x`` (tensor, numpy array, or nested lists)."""
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(x)
    t = t.detach()
    if t.is_complex():
        raise TypeError("complex tensors are not supported")
    return t.to(device="cpu", dtype=torch.float64)


def _json_float(v: float) -> float | str:
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return v


def _unravel(flat_index: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    out = []
    for dim in reversed(shape):
        out.append(flat_index % dim)
        flat_index //= dim
    return tuple(reversed(out))


def _nonfinite_message(name: str, t: torch.Tensor) -> str | None:
    nan_mask = torch.isnan(t)
    inf_mask = torch.isinf(t)
    n_nan = int(nan_mask.sum())
    n_inf = int(inf_mask.sum())
    if n_nan == 0 and n_inf == 0:
        return None
    first_flat = int(torch.nonzero((nan_mask | inf_mask).reshape(-1))[0, 0])
    first = _unravel(first_flat, tuple(t.shape))
    return f"{name} has {n_nan} NaN and {n_inf} Inf values (first at index {first})"


@dataclass(frozen=True)
class Comparison:
    """Error figures of ``actual`` against ``expected`` (see :func:`compare`)."""

    max_abs: float
    mean_abs: float
    rel_fro: float
    cosine: float
    sqnr_db: float
    nmse: float
    worst_index: tuple[int, ...]
    worst_actual: float
    worst_expected: float
    nonfinite: str | None
    shape: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict: inf/nan floats become the strings "inf", "-inf", "nan"; tuples become lists."""
        out: dict[str, Any] = {}
        for key, value in asdict(self).items():
            if isinstance(value, float):
                out[key] = _json_float(value)
            elif isinstance(value, tuple):
                out[key] = list(value)
            else:
                out[key] = value
        return out

    def describe(self) -> str:
        """One line, e.g. ``max_abs=1.2e-06 ... sqnr=120.3dB worst at (0, 3, 17): 0.1234 vs 0.1235``."""
        text = (
            f"max_abs={self.max_abs:.3g} mean_abs={self.mean_abs:.3g} rel_fro={self.rel_fro:.3g} "
            f"cosine={self.cosine:.6f} sqnr={self.sqnr_db:.1f}dB"
        )
        if not math.isnan(self.worst_actual):
            text += f" worst at {self.worst_index}: {self.worst_actual:.6g} vs {self.worst_expected:.6g}"
        if self.nonfinite:
            text += f" NONFINITE: {self.nonfinite}"
        return text


def compare(actual: Any, expected: Any) -> Comparison:
    """Compare ``actual`` with ``expected`` elementwise, in float64 on the CPU.

    Raises ``ValueError`` naming both shapes when they differ. NaN/Inf in either tensor are reported in
    ``nonfinite`` and the figures are computed over the elements finite in both (nan when none are).
    """
    a = to_float64(actual)
    e = to_float64(expected)
    if a.shape != e.shape:
        raise ValueError(
            f"shape mismatch: actual has shape {tuple(a.shape)}, expected has shape {tuple(e.shape)}"
        )
    shape = tuple(int(s) for s in a.shape)

    messages = [m for m in (_nonfinite_message("actual", a), _nonfinite_message("expected", e)) if m]
    nonfinite = "; ".join(messages) if messages else None

    flat_a = a.reshape(-1)
    flat_e = e.reshape(-1)
    finite = torch.isfinite(flat_a) & torch.isfinite(flat_e)
    n_finite = int(finite.sum())
    nan = float("nan")

    if flat_a.numel() == 0:
        # Nothing to compare: vacuously identical.
        return Comparison(0.0, 0.0, 0.0, 1.0, math.inf, 0.0, (), nan, nan, nonfinite, shape)
    if n_finite == 0:
        return Comparison(nan, nan, nan, nan, nan, nan, (), nan, nan, nonfinite, shape)

    idx = torch.nonzero(finite).reshape(-1)
    fa = flat_a[idx]
    fe = flat_e[idx]
    diff = fa - fe
    absdiff = diff.abs()

    pos = int(torch.argmax(absdiff))
    max_abs = float(absdiff[pos])
    worst_index = _unravel(int(idx[pos]), shape)
    worst_actual = float(fa[pos])
    worst_expected = float(fe[pos])
    mean_abs = float(absdiff.mean())

    diff_sq = float(torch.dot(diff, diff))
    e_sq = float(torch.dot(fe, fe))
    a_sq = float(torch.dot(fa, fa))
    diff_norm = math.sqrt(diff_sq)
    e_norm = math.sqrt(e_sq)
    a_norm = math.sqrt(a_sq)

    rel_fro = diff_norm / max(e_norm, _TINY)
    if a_norm == 0.0 and e_norm == 0.0:
        cosine = 1.0
    elif a_norm == 0.0 or e_norm == 0.0:
        cosine = 0.0
    else:
        cosine = float(torch.dot(fa, fe)) / (a_norm * e_norm)
        cosine = max(-1.0, min(1.0, cosine))
    if diff_sq == 0.0:
        sqnr_db = math.inf
        nmse = 0.0
    elif e_sq == 0.0:
        sqnr_db = -math.inf
        nmse = math.inf
    else:
        nmse = diff_sq / e_sq
        sqnr_db = 10.0 * math.log10(e_sq / diff_sq)

    return Comparison(
        max_abs=max_abs,
        mean_abs=mean_abs,
        rel_fro=rel_fro,
        cosine=cosine,
        sqnr_db=sqnr_db,
        nmse=nmse,
        worst_index=worst_index,
        worst_actual=worst_actual,
        worst_expected=worst_expected,
        nonfinite=nonfinite,
        shape=shape,
    )


def three_tensor_ratio(port_lp: Any, ref_lp: Any, ref_fp32: Any) -> float:
    """``R = ||port_lp - ref_fp32|| / ||ref_lp - ref_fp32||`` (Frobenius norms, float64).

    R near 1: the port's low-precision error is the reference's own rounding error. When the denominator
    is 0, returns 1.0 if the numerator is 0 too, else inf. NaN/Inf inputs give a nan or inf R (never hidden).
    """
    p = to_float64(port_lp)
    r = to_float64(ref_lp)
    f = to_float64(ref_fp32)
    if not (p.shape == r.shape == f.shape):
        raise ValueError(
            f"shape mismatch: port_lp has shape {tuple(p.shape)}, ref_lp has shape {tuple(r.shape)}, "
            f"ref_fp32 has shape {tuple(f.shape)}"
        )
    num = float(torch.linalg.vector_norm(p - f))
    den = float(torch.linalg.vector_norm(r - f))
    if math.isnan(num) or math.isnan(den):
        return float("nan")
    if den == 0.0:
        return 1.0 if num == 0.0 else math.inf
    return num / den


@dataclass(frozen=True)
class Verdict:
    """``level`` is "pass", "warn" or "fail"; ``ok`` is False only for "fail"."""

    ok: bool
    level: str
    reason: str


def judge_strict(cmp: Comparison, rel_tol: float) -> Verdict:
    """FP32 strict check: fail on any NaN/Inf, fail when ``rel_fro > rel_tol``, else pass."""
    if cmp.nonfinite:
        return Verdict(False, "fail", f"non-finite values (NaN/Inf): {cmp.nonfinite}; {cmp.describe()}")
    if math.isnan(cmp.rel_fro) or cmp.rel_fro > rel_tol:
        return Verdict(
            False,
            "fail",
            f"relative Frobenius error {cmp.rel_fro:.3g} exceeds rel_tol={rel_tol:.3g}: {cmp.describe()}",
        )
    return Verdict(True, "pass", f"relative Frobenius error {cmp.rel_fro:.3g} <= rel_tol={rel_tol:.3g}")


def judge_ratio(
    ratio: float,
    band: tuple[float, float] = (0.8, 1.2),
    cmp: Comparison | None = None,
    *,
    dtype_name: str = "bf16",
) -> Verdict:
    """Low-precision check on the three-tensor ratio R (see :func:`three_tensor_ratio`).

    Fail above ``band[1]`` (or on nan R, or when ``cmp`` reports NaN/Inf), warn below ``band[0]``
    (the port computes in more precision than the reference: an extra upcast?), pass inside.
    """
    lo, hi = band
    if lo > hi:
        raise ValueError(f"band must be (low, high) with low <= high, got {band}")
    tail = f"; {cmp.describe()}" if cmp is not None else ""
    band_text = f"band {lo:g}-{hi:g}"
    if cmp is not None and cmp.nonfinite:
        return Verdict(False, "fail", f"non-finite values (NaN/Inf): {cmp.nonfinite} (R={ratio:.3g}){tail}")
    if math.isnan(ratio):
        return Verdict(False, "fail", f"R is NaN: the outputs hold NaN/Inf values ({band_text}){tail}")
    if ratio > hi:
        if math.isinf(ratio):
            reason = (
                f"the reference's own {dtype_name} rounding error is zero but the port differs "
                f"(R=inf, {band_text})"
            )
        else:
            reason = (
                f"port error is R={ratio:.3g}x the reference's own {dtype_name} rounding error ({band_text})"
            )
        return Verdict(False, "fail", reason + tail)
    if ratio < lo:
        return Verdict(
            True,
            "warn",
            f"port is more precise than the reference in this dtype (R={ratio:.2g} < {lo:g}): "
            f"an extra upcast?{tail}",
        )
    return Verdict(
        True,
        "pass",
        f"port error is R={ratio:.3g}x the reference's own {dtype_name} rounding error ({band_text}){tail}",
    )
