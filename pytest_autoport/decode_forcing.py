"""Teacher-forced decoding through the compiled graphs: the token-generation path judged on the
golden's own context.

Each prompt is context-encoded, then its golden continuation is fed one token at a time through the
token-generation graph of the smallest bucket that reaches the position, exactly as generation does;
every step's logits are kept, to be compared with the reference's logits at the same positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .generation import StaticGraphs, fill_static_batch, token_bucket


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
    prompts: list[list[int]], continuations: list[list[int]], graphs: StaticGraphs
) -> DecodeLogits:
    """Context-encode each prompt (encoder-decoder: encode each source, then context-encode the decoder
    start token), then feed its continuation one token at a time through the token-generation graphs
    (crossing buckets as generation does), keeping every step's logits."""
    if len(prompts) != len(continuations):
        raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
    longest = max((len(c) for c in continuations), default=0)
    prefill = graphs.prefill(longest, set())
    buckets = sorted(graphs.token)
    batch_size = graphs.batch_size
    out = DecodeLogits([], [], [])
    for first in range(0, len(prompts), batch_size):
        group = prompts[first : first + batch_size]
        conts = continuations[first : first + batch_size]
        steps = max(len(c) for c in conts)
        # the rows that fill the static batch repeat the first row; short continuations are padded
        fed = torch.tensor([(c + [0] * steps)[:steps] for c in fill_static_batch(conts, batch_size)])
        graphs.reset_cache()
        logits, start, graph = prefill(group)
        per_step, names = [logits], [graph]
        for step in range(1, steps):
            position = (start + step - 1)[:, None]
            reach = token_bucket(position, buckets)
            per_step.append(graphs.token[reach](fed[:, step - 1 : step], position)[:, -1])
            names.append(f"token_generation_{reach}")
        stacked = torch.stack(per_step, dim=1).float()
        for i, cont in enumerate(conts):
            n = len(cont)
            out.logits.append(stacked[i, :n].clone())
            out.graphs.append(names[:n])
            out.positions.append([int(start[i]) - 1 + k for k in range(n)])
    return out
