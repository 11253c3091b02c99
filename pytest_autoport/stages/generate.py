"""Stage ``generate``: the compiled port generates through its token-generation graphs and KV cache;
the output must be non-degenerate and, where the spec sets gates, fast enough."""

from __future__ import annotations

from ..degeneracy import find_degeneracy
from ..errors import StageFailure
from .golden_reference import streaming


def run(session) -> dict:
    result = session.generation
    g = session.spec.generation
    texts = [session.tokenizer.decode(tokens, skip_special_tokens=True) for tokens in result.tokens]
    tokens_per_s = (
        result.decode_steps * session.spec.port.batch_size / result.decode_s if result.decode_s else 0.0
    )
    figures = {
        "prompts": len(result.tokens),
        "new_tokens": sum(len(t) for t in result.tokens),
        "ttft_s": round(result.ttft_s, 5),
        "decode_tokens_per_s": round(tokens_per_s, 1),
        "e2e_s": round(result.total_s, 4),
        "buckets_used": ",".join(result.buckets_used),
        "sampling": result.sampling,
        "texts": texts,
    }
    problems, like_hf = [], []
    for i, tokens in enumerate(result.tokens):
        issue = find_degeneracy(tokens, g.max_token_run, g.max_ngram_repeats)
        if not issue:
            continue
        if _hf_degenerates_alike(session, i, tokens):
            like_hf.append(
                f"prompt {i}: degenerate output ({issue}), as HF's own greedy output for it: the checkpoint's "
                "behaviour, not the port's (the golden stage judges parity)"
            )
        else:
            problems.append(
                f"prompt {i}: degenerate output ({issue}): {texts[i]!r}"
                + (
                    ""
                    if result.sampling != "greedy" or streaming(session)
                    else "; HF's greedy output is not this"
                )
            )
    if like_hf:
        figures["warning"] = "\n".join(like_hf)
    if g.max_ttft_s and result.ttft_s > g.max_ttft_s:
        problems.append(
            f"time to first token {result.ttft_s:.3f} s exceeds generation.max_ttft_s ({g.max_ttft_s})"
        )
    if g.min_tokens_per_s and tokens_per_s < g.min_tokens_per_s:
        problems.append(
            f"token generation at {tokens_per_s:.1f} tok/s is below generation.min_tokens_per_s ({g.min_tokens_per_s})"
        )
    if problems:
        raise StageFailure("\n".join(problems), figures)
    return figures


def _hf_degenerates_alike(session, prompt: int, tokens: list[int]) -> bool:
    """Whether HF's FP32 greedy continuation of the prompt (the golden reference) is the port's output
    and degenerate under the same limits. Greedy generation only; a streamed reference has no free-running
    HF output to compare with."""
    if session.generation.sampling != "greedy" or streaming(session):
        return False
    g = session.spec.generation
    hf = session.golden_reference.tokens[prompt]
    return tokens[: len(hf)] == hf and find_degeneracy(hf, g.max_token_run, g.max_ngram_repeats) is not None
