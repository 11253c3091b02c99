"""Is generated text degenerate? A token or a short n-gram repeating back to back, or nothing at all."""

from __future__ import annotations


def find_degeneracy(tokens: list[int], max_token_run: int, max_ngram_repeats: int) -> str | None:
    """A description of the first degeneracy found, or None for healthy output."""
    if not tokens:
        return "empty output"
    run = 1
    for i in range(1, len(tokens)):
        run = run + 1 if tokens[i] == tokens[i - 1] else 1
        if run > max_token_run:
            return f"token {tokens[i]} repeated {run} times in a row (limit {max_token_run})"
    for n in (2, 3, 4):
        for start in range(len(tokens) - n):
            gram = tokens[start : start + n]
            repeats = 1
            pos = start + n
            while tokens[pos : pos + n] == gram:
                repeats += 1
                pos += n
            if repeats > max_ngram_repeats:
                return f"{n}-gram {gram} repeated {repeats} times in a row (limit {max_ngram_repeats})"
    return None
