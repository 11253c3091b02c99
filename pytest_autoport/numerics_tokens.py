"""Token-level checks of the golden (DESIGN.md section 4): :func:`token_match` (free-running greedy
tokens), :func:`teacher_forced_match` (the same context at every position) and :func:`logit_check`
(NxD Inference style top-k logit tolerances). Pure functions on torch tensors, figures in float64."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .numerics import to_float64

__all__ = ["DEFAULT_LOGIT_TOL_MAP", "TokenMatch", "logit_check", "teacher_forced_match", "token_match"]

# NxD Inference style: top-k slice of the expected distribution -> (atol, rtol); None means all tokens.
DEFAULT_LOGIT_TOL_MAP: dict[int | None, tuple[float, float]] = {
    5: (1e-5, 0.01),
    50: (1e-5, 0.02),
    1000: (1e-5, 0.03),
    None: (1e-5, 0.05),
}


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
    t = to_float64(logits)
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
    e = to_float64(expected_logits)
    a = to_float64(actual_logits)
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
