"""Teacher-forced decoding through the compiled graphs: the token-generation path judged on the
golden's own context.

Each prompt is context-encoded, then its golden continuation is fed one token at a time through the
token-generation graph of the smallest bucket that reaches the position, exactly as generation does;
every step's logits are kept, to be compared with the reference's logits at the same positions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .buckets import smallest_fitting
from .errors import StageFailure
from .generation import DecoderContextGraph, EncoderGraph, Graph, Prefill, decoder_prefill, seq2seq_prefill


@dataclass
class DecodeLogits:
    """Logits of every decode step of a teacher-forced run, per prompt.

    ``logits[i]`` is [len(continuations[i]), vocab]: step k predicts ``continuations[i][k]``. Step 0 comes
    from context encoding, every later step from one token-generation call fed the previous golden token.
    ``graphs[i][k]`` names the graph that produced step k and ``positions[i][k]`` the position of the
    token fed at that step (the last prompt position at step 0)."""

    logits: list[torch.Tensor]
    graphs: list[list[str]]
    positions: list[list[int]]


def decode_teacher_forced(
    prompts: list[list[int]],
    continuations: list[list[int]],
    *,
    context_graphs: dict[int, Graph],
    token_graphs: dict[int, Graph],
    reset_cache: Callable[[], None],
    batch_size: int,
    max_seq_len: int,
    pad_id: int = 0,
) -> DecodeLogits:
    """Decoder-only: context-encode each prompt, then feed its continuation one token at a time through
    the token-generation graphs (crossing buckets as generation does), keeping every step's logits."""
    longest = max((len(c) for c in continuations), default=0)
    prefill = decoder_prefill(context_graphs, batch_size, max_seq_len, longest, pad_id, set())
    return _forced_in_batches(prompts, continuations, prefill, token_graphs, reset_cache, batch_size)


def decode_teacher_forced_seq2seq(
    sources: list[list[int]],
    continuations: list[list[int]],
    *,
    encoder_graphs: dict[int, EncoderGraph],
    context_graphs: dict[int, DecoderContextGraph],
    token_graphs: dict[int, Graph],
    reset_cache: Callable[[], None],
    batch_size: int,
    max_seq_len: int,
    decoder_start_id: int,
    pad_id: int = 0,
) -> DecodeLogits:
    """Encoder-decoder: encode each source, context-encode the decoder start token, then feed the
    continuation one token at a time through the decoder's token-generation graphs."""
    longest = max((len(c) for c in continuations), default=0)
    prefill = seq2seq_prefill(
        encoder_graphs, context_graphs, batch_size, max_seq_len, longest, decoder_start_id, pad_id, set()
    )
    return _forced_in_batches(sources, continuations, prefill, token_graphs, reset_cache, batch_size)


def _forced_in_batches(prompts, continuations, prefill: Prefill, token_graphs, reset_cache, batch_size):
    if len(prompts) != len(continuations):
        raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
    buckets = sorted(token_graphs)
    out = DecodeLogits([], [], [])
    for first in range(0, len(prompts), batch_size):
        group = prompts[first : first + batch_size]
        conts = continuations[first : first + batch_size]
        steps = max(len(c) for c in conts)
        # the rows that fill the static batch repeat the first row; short continuations are padded
        fed = torch.tensor(
            [(c + [0] * steps)[:steps] for c in conts + [conts[0]] * (batch_size - len(conts))]
        )
        reset_cache()
        logits, start, graph = prefill(group)
        per_step, names = [logits], [graph]
        for step in range(1, steps):
            position = (start + step - 1)[:, None]
            reach = smallest_fitting(int(position.max()) + 1, buckets)
            if reach is None:
                raise StageFailure(
                    f"decode position {int(position.max())} is beyond the largest token-generation bucket ({buckets[-1]})"
                )
            per_step.append(token_graphs[reach](fed[:, step - 1 : step], position)[:, -1])
            names.append(f"token_generation_{reach}")
        stacked = torch.stack(per_step, dim=1).float()
        for i, cont in enumerate(conts):
            n = len(cont)
            out.logits.append(stacked[i, :n].clone())
            out.graphs.append(names[:n])
            out.positions.append([int(start[i]) - 1 + k for k in range(n)])
    return out
