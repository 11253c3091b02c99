"""Stage ``generate``: the compiled port generates through its token-generation graph and KV cache."""

from __future__ import annotations

from ..errors import StageFailure


def run(session) -> dict:
    result = session.generation
    texts = [session.tokenizer.decode(tokens) for tokens in result.tokens]
    new_tokens = sum(len(t) for t in result.tokens)
    figures = {
        "prompts": len(result.tokens),
        "new_tokens": new_tokens,
        "ttft_s": round(result.ttft_s, 4),
        "decode_tokens_per_s": round(result.decode_steps * session.spec.port.batch_size / result.decode_s, 1)
        if result.decode_s > 0
        else None,
        "e2e_s": round(result.total_s, 4),
        "buckets_used": ",".join(result.buckets_used),
        "sample": texts[0][:200],
    }
    empty = [i for i, tokens in enumerate(result.tokens) if not tokens]
    if empty:
        raise StageFailure(f"generation produced no tokens for prompt(s) {empty}", figures)
    return figures
