"""Numerical comparison of a port's outputs with the HuggingFace reference (DESIGN.md section 4).

Pure functions on torch tensors; nothing here imports pytest. Every figure is computed in float64 on the
CPU. NaN and Inf are never replaced or hidden: when either tensor holds them, the figures are computed over
the elements that are finite in both tensors (or set to nan when there are none) and ``Comparison.nonfinite``
says how many there are and where the first one is.

- FP32 strict: :func:`compare` then :func:`judge_strict` (relative Frobenius error against a tolerance).
- Low precision: :func:`three_tensor_ratio` ``R = ||port_lp - ref_fp32|| / ||ref_lp - ref_fp32||`` then
  :func:`judge_ratio` (R near 1 is healthy, above the band a bug, below it an extra upcast).
- Golden tokens: :func:`token_match` (free-running), :func:`teacher_forced_match` (same context at every
  position) and :func:`logit_check` (NxD Inference style top-k logit tolerances).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

__all__ = [
    "Comparison",
    "TokenMatch",
    "Verdict",
    "compare",
    "judge_ratio",
    "judge_strict",
    "logit_check",
    "teacher_forced_match",
    "three_tensor_ratio",
    "token_match",
    "DEFAULT_LOGIT_TOL_MAP",
]

_TINY = torch.finfo(torch.float64).tiny

# NxD Inference style: top-k slice of the expected distribution -> (atol, rtol); None means all tokens.
DEFAULT_LOGIT_TOL_MAP: dict[int | None, tuple[float, float]] = {
    5: (1e-5, 0.01),
    50: (1e-5, 0.02),
    1000: (1e-5, 0.03),
    None: (1e-5, 0.05),
}


def _f64(x: Any) -> torch.Tensor:
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
    a = _f64(actual)
    e = _f64(expected)
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
    p = _f64(port_lp)
    r = _f64(ref_lp)
    f = _f64(ref_fp32)
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


@dataclass
class TokenMatch:
    """Free-running greedy match of generated tokens against the golden ones.

    ``per_prompt[i]`` is the match rate of prompt i (position-wise over the expected length; an empty
    expected sequence counts as 1.0); ``first_divergence[i]`` the first mismatching position or None.
    """

    per_prompt: list[float] = field(default_factory=list)
    first_divergence: list[int | None] = field(default_factory=list)
    matched: int = 0
    total: int = 0
    rate: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def token_match(expected: list[list[int]], actual: list[list[int]]) -> TokenMatch:
    """Position-wise match of ``actual`` against ``expected`` token ids, per prompt and overall.

    Only the first ``len(expected[i])`` positions count; missing actual tokens are mismatches and extra
    actual tokens are ignored.
    """
    if len(expected) != len(actual):
        raise ValueError(f"expected has {len(expected)} prompts but actual has {len(actual)}")
    result = TokenMatch()
    for exp_seq, act_seq in zip(expected, actual, strict=True):
        exp_list = [int(t) for t in exp_seq]
        act_list = [int(t) for t in act_seq]
        hits = 0
        first: int | None = None
        for pos, tok in enumerate(exp_list):
            if pos < len(act_list) and act_list[pos] == tok:
                hits += 1
            elif first is None:
                first = pos
        result.per_prompt.append(hits / len(exp_list) if exp_list else 1.0)
        result.first_divergence.append(first)
        result.matched += hits
        result.total += len(exp_list)
    result.rate = result.matched / result.total if result.total else 1.0
    return result


def _as_seq_vocab(name: str, logits: Any) -> torch.Tensor:
    t = _f64(logits)
    if t.dim() == 3 and t.shape[0] == 1:
        t = t[0]
    if t.dim() == 1:
        t = t.unsqueeze(0)
    if t.dim() != 2:
        raise ValueError(f"{name} must have shape [seq, vocab] (or [1, seq, vocab]), got {tuple(t.shape)}")
    return t


def teacher_forced_match(golden_logits: Any, port_logits: Any, tokens: Any = None) -> dict[str, Any]:
    """Argmax agreement of two ``[seq, vocab]`` logit tensors computed on the same token sequence.

    ``tokens[i]`` (optional) is the input token at position i, reported beside each divergence. Returns
    ``{"rate", "matched", "total", "divergences"}``; each divergence holds ``position``, ``golden_token``,
    ``port_token``, ``golden_margin`` (golden top-1 minus top-2 logit: small means a near-tie),
    ``port_token_in_golden_top5`` and ``input_token``.
    """
    g = _as_seq_vocab("golden_logits", golden_logits)
    p = _as_seq_vocab("port_logits", port_logits)
    if g.shape != p.shape:
        raise ValueError(
            f"shape mismatch: golden_logits has shape {tuple(g.shape)}, port_logits has shape {tuple(p.shape)}"
        )
    token_list = [int(t) for t in torch.as_tensor(tokens).reshape(-1).tolist()] if tokens is not None else []
    seq, vocab = g.shape
    g_arg = g.argmax(dim=-1)
    p_arg = p.argmax(dim=-1)
    k = min(5, vocab)
    g_top = torch.topk(g, k=k, dim=-1)
    divergences = []
    for pos in torch.nonzero(g_arg != p_arg).reshape(-1).tolist():
        top_vals = g_top.values[pos]
        margin = float(top_vals[0] - top_vals[1]) if vocab > 1 else math.inf
        port_tok = int(p_arg[pos])
        divergences.append(
            {
                "position": pos,
                "golden_token": int(g_arg[pos]),
                "port_token": port_tok,
                "golden_margin": margin,
                "port_token_in_golden_top5": port_tok in g_top.indices[pos].tolist(),
                "input_token": token_list[pos] if pos < len(token_list) else None,
            }
        )
    matched = seq - len(divergences)
    return {
        "rate": matched / seq if seq else 1.0,
        "matched": matched,
        "total": seq,
        "divergences": divergences,
    }


def _topk_key(k: int | None) -> str:
    return "all" if k is None else f"top{k}"


def logit_check(
    expected_logits: Any,
    actual_logits: Any,
    tol_map: dict[int | None, tuple[float, float]] | None = None,
    divergence_difference_tol: float = 0.001,
) -> dict[str, Any]:
    """Logit validation in the style of NxD Inference.

    Logits are ``[seq, vocab]`` or ``[batch, seq, vocab]`` (flattened to positions). At every position,
    for each ``k -> (atol, rtol)`` in ``tol_map`` (``None`` = the whole vocabulary) the actual logits at the
    indices of the expected top-k must satisfy ``|actual - expected| <= atol + rtol * |expected|``. Where the
    argmax differs, the actual logit of the expected argmax must be within ``divergence_difference_tol`` of
    the actual maximum. Returns ``{"passed", "failures", "max_error_per_topk"}``; the keys of
    ``max_error_per_topk`` are "top5", "top50", ..., "all". NaN/Inf in the actual logits fail.
    """
    tol_map = DEFAULT_LOGIT_TOL_MAP if tol_map is None else tol_map
    e = _f64(expected_logits)
    a = _f64(actual_logits)
    if e.shape != a.shape:
        raise ValueError(
            f"shape mismatch: expected_logits has shape {tuple(e.shape)}, "
            f"actual_logits has shape {tuple(a.shape)}"
        )
    if e.dim() == 0:
        raise ValueError("logits must have a vocabulary dimension")
    vocab = e.shape[-1]
    e = e.reshape(-1, vocab)
    a = a.reshape(-1, vocab)
    failures: list[dict[str, Any]] = []
    max_err: dict[str, float] = {_topk_key(k): 0.0 for k in tol_map}
    if e.shape[0] == 0:
        return {"passed": True, "failures": failures, "max_error_per_topk": max_err}

    row_ok = torch.isfinite(a).all(dim=-1) & torch.isfinite(e).all(dim=-1)
    for pos in torch.nonzero(~row_ok).reshape(-1).tolist():
        failures.append(
            {
                "position": pos,
                "kind": "nonfinite",
                "actual_nonfinite": int((~torch.isfinite(a[pos])).sum()),
                "expected_nonfinite": int((~torch.isfinite(e[pos])).sum()),
            }
        )
    rows = torch.nonzero(row_ok).reshape(-1)
    ef, af = e[rows], a[rows]
    finite_ks = [int(k) for k in tol_map if k is not None]
    if finite_ks:
        order = torch.topk(ef, k=min(max(finite_ks), vocab), dim=-1, sorted=True).indices

    for k, (atol, rtol) in tol_map.items():
        key = _topk_key(k)
        if k is None:  # the whole vocabulary: no need to gather
            idx = None
            ev, av = ef, af
        else:
            idx = order[:, : min(int(k), vocab)]
            ev = torch.gather(ef, 1, idx)
            av = torch.gather(af, 1, idx)
        err = (av - ev).abs()
        bound = atol + rtol * ev.abs()
        if rows.numel():
            max_err[key] = float(err.max())
        over = err > bound
        excess = torch.where(over, err - bound, torch.zeros_like(err))
        for r in torch.nonzero(over.any(dim=-1)).reshape(-1).tolist():
            bad = int(torch.argmax(excess[r]))
            failures.append(
                {
                    "position": int(rows[r]),
                    "kind": "tolerance",
                    "topk": key,
                    "atol": atol,
                    "rtol": rtol,
                    "n_violations": int(over[r].sum()),
                    "token": bad if idx is None else int(idx[r, bad]),
                    "expected": float(ev[r, bad]),
                    "actual": float(av[r, bad]),
                    "error": float(err[r, bad]),
                }
            )
    if not bool(row_ok.all()):
        max_err = {key: float("nan") for key in max_err}

    e_arg = ef.argmax(dim=-1)
    a_arg = af.argmax(dim=-1)
    for r in torch.nonzero(e_arg != a_arg).reshape(-1).tolist():
        difference = float(af[r, a_arg[r]] - af[r, e_arg[r]])
        if not difference < divergence_difference_tol:
            failures.append(
                {
                    "position": int(rows[r]),
                    "kind": "divergence",
                    "expected_token": int(e_arg[r]),
                    "actual_token": int(a_arg[r]),
                    "difference": difference,
                    "divergence_difference_tol": divergence_difference_tol,
                }
            )
    failures.sort(key=lambda f: f["position"])

    return {"passed": not failures, "failures": failures, "max_error_per_topk": max_err}
