"""Greedy generation over static-shape graphs: pad to a context bucket, then decode one token at a time.

Target-independent: a target hands in its context-encoding graphs (one per bucket) and its
token-generation graph; this module picks buckets, pads, batches and times.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from .errors import StageFailure
from .targets.base import GenerationResult

Graph = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (input_ids, position_ids) -> logits


def pick_bucket(length: int, buckets: list[int]) -> int:
    for bucket in buckets:
        if bucket >= length:
            return bucket
    raise StageFailure(
        f"a prompt of {length} tokens does not fit the largest context bucket ({buckets[-1]}); "
        "raise port.context_buckets in the spec or shorten validation.prompts"
    )


def greedy_generate(
    prompts: list[list[int]],
    max_new_tokens: int,
    *,
    context_graphs: dict[int, Graph],
    token_graph: Graph,
    reset_cache: Callable[[], None],
    batch_size: int,
    max_seq_len: int,
    pad_id: int = 0,
) -> GenerationResult:
    buckets = sorted(context_graphs)
    tokens: list[list[int]] = []
    ttft = decode_s = 0.0
    steps = 0
    used: list[str] = []
    start = time.perf_counter()
    for first in range(0, len(prompts), batch_size):
        group = prompts[first : first + batch_size]
        rows = group + [group[0]] * (batch_size - len(group))  # fill the static batch
        lengths = torch.tensor([len(r) for r in rows])
        longest = int(lengths.max())
        if longest + max_new_tokens > max_seq_len:
            raise StageFailure(
                f"prompt ({longest} tokens) + {max_new_tokens} new tokens exceeds port.max_seq_len ({max_seq_len})"
            )
        bucket = pick_bucket(longest, buckets)
        used.append(f"context_encoding_{bucket}")
        input_ids = torch.full((batch_size, bucket), pad_id, dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(row)
        positions = torch.arange(bucket).expand(batch_size, bucket).contiguous()

        reset_cache()
        t0 = time.perf_counter()
        logits = context_graphs[bucket](input_ids, positions)
        next_ids = logits[torch.arange(batch_size), lengths - 1].argmax(-1)
        if first == 0:
            ttft = time.perf_counter() - t0
        generated = [next_ids]
        t1 = time.perf_counter()
        for step in range(1, max_new_tokens):
            logits = token_graph(next_ids[:, None], (lengths + step - 1)[:, None])
            next_ids = logits[:, -1].argmax(-1)
            generated.append(next_ids)
            steps += 1
        decode_s += time.perf_counter() - t1
        out = torch.stack(generated, dim=1)
        tokens.extend(out[i].tolist() for i in range(len(group)))
    return GenerationResult(
        tokens=tokens,
        ttft_s=ttft,
        decode_s=decode_s,
        decode_steps=steps,
        total_s=time.perf_counter() - start,
        buckets_used=sorted(set(used)) + ["token_generation"],
    )
