"""Discrete decisions under low precision: router top-k sets that flip between near-tied scores.

Pure functions on tensors (no pytest). A mixture-of-experts router picks each token's top-k experts by
score. When two scores are nearly tied, the rounding of a low-precision run (and which way it falls
depends on the CPU's kernels) can swap an expert, and that token's output then jumps by a whole
expert's contribution: R explodes on one token though nothing is wrong. So each token's expert set is
compared between the HF reference in FP32, the HF reference in low precision and the port in low
precision, and a set that differs is judged by its margin in FP32:

- the margin of a flip is the FP32 score gap it crossed: ``max s(dropped) - min s(added)`` over the
  experts the FP32 reference picked and the other side dropped, and those it picked instead;
- low precision moves every score by about ``delta``, measured as the largest deviation of the HF
  low-precision scores from FP32 on this probe (never less than one ulp of the dtype at the scores'
  magnitude), so the gap between two scores moves by up to ``2 * delta``; the port's kernels may round
  differently from the reference's (another accumulation order, another CPU), so the bound doubles that:
  a flip whose margin is within ``4 * delta`` is a near-tie, explained by rounding alone; the token is
  left out of R and reported;
- a flip at a larger margin is a real disagreement and fails the check, naming token, sets and margin.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class Flip:
    """One token whose expert set differs between the three runs."""

    router: str
    token: int
    fp32: tuple[int, ...]  # HF in FP32
    reference_lp: tuple[int, ...]  # HF in low precision
    port: tuple[int, ...]  # the port in low precision
    margin: float  # FP32 score gap the flip crossed (the larger of the two sides' flips)
    bound: float  # flips within this FP32 gap are near-ties
    near_tie: bool

    def describe(self) -> str:
        kind = "near-tie" if self.near_tie else "clear margin"
        return (
            f"{self.router} token {self.token}: experts HF fp32 {list(self.fp32)}, HF low precision "
            f"{list(self.reference_lp)}, port {list(self.port)}; FP32 margin {self.margin:.3g} "
            f"({kind}, near-tie bound {self.bound:.3g})"
        )

    def to_dict(self) -> dict:
        out = asdict(self)
        for key in ("fp32", "reference_lp", "port"):
            out[key] = list(out[key])
        return out


def _rows(scores: torch.Tensor) -> torch.Tensor:
    return scores.detach().to("cpu", torch.float64).reshape(-1, scores.shape[-1])


def top_k_sets(scores: torch.Tensor, k: int) -> list[tuple[int, ...]]:
    """Each token's top-``k`` experts (sorted indices) from scores [..., experts]."""
    return [tuple(sorted(row)) for row in torch.topk(_rows(scores), k, dim=-1).indices.tolist()]


def flip_margin(fp32_row: torch.Tensor, chosen: tuple[int, ...], other: tuple[int, ...]) -> float:
    """The FP32 gap a flip from ``chosen`` to ``other`` crossed: every expert dropped had to fall below
    every expert added, so the widest such gap (0 when the sets agree)."""
    dropped = [e for e in chosen if e not in other]
    added = [e for e in other if e not in chosen]
    if not dropped:
        return 0.0
    return float(max(fp32_row[dropped]) - min(fp32_row[added]))


def near_tie_bound(reference_lp: torch.Tensor, reference_fp32: torch.Tensor, dtype: torch.dtype) -> float:
    """``4 * delta``: delta the largest |HF low precision - HF FP32| score deviation on this probe, at
    least one ulp of ``dtype`` at the largest score magnitude (see the module docstring)."""
    lp, fp32 = _rows(reference_lp), _rows(reference_fp32)
    finite = torch.isfinite(lp) & torch.isfinite(fp32)
    delta = float((lp - fp32).abs()[finite].max()) if finite.any() else 0.0
    scale = float(fp32[finite].abs().max()) if finite.any() else 0.0
    ulp = torch.finfo(dtype).eps * 2.0 ** torch.tensor(max(scale, 1e-30)).log2().floor().item()
    return 4.0 * max(delta, ulp)


def routing_flips(
    router: str,
    fp32: torch.Tensor,
    reference_lp: torch.Tensor,
    port_lp: torch.Tensor,
    k: int,
    dtype: torch.dtype,
) -> list[Flip]:
    """Every token whose top-``k`` expert set differs between the three router score tensors."""
    if fp32.shape != reference_lp.shape or fp32.shape != port_lp.shape or fp32.shape[-1] <= k:
        return []
    bound = near_tie_bound(reference_lp, fp32, dtype)
    rows = _rows(fp32)
    sets = zip(top_k_sets(fp32, k), top_k_sets(reference_lp, k), top_k_sets(port_lp, k))
    flips = []
    for token, (s32, slp, sport) in enumerate(sets):
        if s32 == slp == sport:
            continue
        margin = max(flip_margin(rows[token], s32, slp), flip_margin(rows[token], s32, sport))
        flips.append(Flip(router, token, s32, slp, sport, margin, bound, margin <= bound))
    return flips


def keep_tokens(tensors: list[torch.Tensor], flipped: set[int]) -> list[torch.Tensor]:
    """The tensors [..., hidden] without the flipped token rows (their leading dimensions flattened);
    unchanged when nothing flipped or the token count does not match."""
    if not flipped or not tensors:
        return tensors
    tokens = tensors[0].shape[:-1].numel()
    if any(t.shape[:-1].numel() != tokens for t in tensors) or max(flipped) >= tokens:
        return tensors
    keep = torch.tensor([i not in flipped for i in range(tokens)])
    if not keep.any():
        return tensors
    return [t.reshape(tokens, t.shape[-1])[keep] for t in tensors]


# -- greedy golden: a divergence at a near-tie -------------------------------------------------------

GOLDEN_NEAR_TIE_FLOOR = 0.01  # logits; the near-tie bound never falls below this


def golden_near_tie_bound(golden_logit: float, dtype_name: str) -> float:
    """The logit gap under which a port in ``dtype_name`` may pick the other token by rounding alone:
    4 ulps of that dtype at the golden logit's magnitude (as for router scores), at least 0.01."""
    eps = torch.finfo(getattr(torch, dtype_name)).eps
    magnitude = max(abs(golden_logit), 1e-30)
    return max(GOLDEN_NEAR_TIE_FLOOR, 4.0 * eps * 2.0 ** math.floor(math.log2(magnitude)))


def _tie(logits: torch.Tensor, golden_token: int, port_token: int | None, dtype_name: str):
    """(golden logit gap between its token and the port's, the near-tie bound there, whether it is one)."""
    top = float(logits[golden_token])
    bound = golden_near_tie_bound(top, dtype_name)
    gap = math.inf if port_token is None else top - float(logits[port_token])
    return gap, bound, gap <= bound


def margin_aware_token_match(
    free, forced: list[dict], golden_logits: list, ported, dtype_name: str, reference_lp: list | None = None
) -> dict:
    """The greedy token gate with near-ties counted as tied: a prompt whose free-running continuation
    first diverges at a near-tie (golden logit gap between its token and the port's within
    :func:`golden_near_tie_bound`, or, for a low-precision port, where HF run in that precision
    (``reference_lp``, at the golden positions) ranks the port's token at least as high as the golden
    one: the reference's own rounding makes the same choice) is judged teacher-forced instead (every
    position on the golden context), tied teacher-forced divergences counted as matches; other prompts
    keep their free-running match. Returns ``token_match_margin_aware`` and which prompts were tied,
    and why."""

    def tie(i, position, golden_token, port_token):
        gap, bound, is_tie = _tie(golden_logits[i][position], golden_token, port_token, dtype_name)
        if is_tie or reference_lp is None or port_token is None:
            return gap, bound, is_tie, "near-tie" if is_tie else ""
        row = reference_lp[i][position]
        same_choice = float(row[port_token]) >= float(row[golden_token])
        return gap, bound, same_choice, f"HF in {dtype_name} picks it too" if same_choice else ""

    matched, total, tied = 0, 0, []
    for i, pos in enumerate(free.first_divergence):
        length = len(golden_logits[i])
        total += length
        free_hits = round(free.per_prompt[i] * length)
        if pos is None or pos >= length:
            matched += free_hits
            continue
        port_token = ported[i][pos] if pos < len(ported[i]) else None
        gap, bound, is_tie, why = tie(i, pos, int(golden_logits[i][pos].argmax()), port_token)
        if not is_tie:
            matched += free_hits
            continue
        ties = sum(
            tie(i, d["position"], d["golden_token"], d["port_token"])[2] for d in forced[i]["divergences"]
        )
        matched += forced[i]["matched"] + ties
        tied.append(
            {"prompt": i, "position": pos, "golden_gap": round(gap, 6), "bound": round(bound, 6), "why": why}
        )
    rate = matched / total if total else 1.0
    note = ""
    if tied:
        listed = ", ".join(
            f"prompt {t['prompt']} at token {t['position']} ("
            + (f"gap {t['golden_gap']:.3g} <= {t['bound']:.3g}" if t["why"] == "near-tie" else t["why"])
            + ")"
            for t in tied
        )
        note = (
            f"margin-aware match {rate:.1%}: free-running divergences at near-ties count as tied and those "
            f"prompts are judged teacher-forced: {listed}"
        )
    return {"token_match_margin_aware": round(rate, 4), "near_tie_divergences": tied, "near_tie_note": note}
