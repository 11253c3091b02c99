"""Stage ``golden``: the compiled port's greedy tokens against the FP32 HuggingFace golden."""

from __future__ import annotations

from ..errors import StageFailure
from ..numerics import token_match


def run(session) -> dict:
    golden = session.golden_tokens
    ported = session.generation.tokens
    match = token_match(golden, ported)
    threshold = session.spec.validation.token_match_threshold
    figures = {
        "token_match": round(match.rate, 4),
        "threshold": threshold,
        "matched": match.matched,
        "total": match.total,
        "first_divergence": match.first_divergence,
    }
    if match.rate < threshold:
        lines = []
        for i, pos in enumerate(match.first_divergence):
            if pos is None:
                continue
            tok = session.tokenizer.decode
            g, p = golden[i], ported[i]
            lines.append(
                f"  prompt {i}: diverges at new token {pos}: golden {g[pos]} {tok([g[pos]])!r} vs port "
                f"{p[pos] if pos < len(p) else None} {tok([p[pos]]) if pos < len(p) else ''!r}"
            )
        raise StageFailure(
            f"greedy token match {match.rate:.1%} is below the threshold {threshold:.0%}\n" + "\n".join(lines), figures
        )
    return figures
