"""Generation over static-shape graphs: pad to a context bucket, then decode one token at a time
through the token-generation graph of the smallest bucket that reaches the current position.

Target-independent: a target hands in its graphs and a cache reset; this module picks buckets,
pads, batches, samples and times.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .buckets import smallest_fitting
from .errors import StageFailure
from .targets.base import GenerationResult

Graph = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (input_ids, position_ids) -> logits
# one static batch of prompts -> (next-token logits [batch, vocab], first new position [batch], graph name)
Prefill = Callable[[list[list[int]]], tuple[torch.Tensor, torch.Tensor, str]]


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # 0: no top-k filter
    top_p: float = 1.0
    seed: int = 0
    eos_token_id: int | None = None  # stop a row at EOS; None: always max_new_tokens
    suppress_token_ids: tuple[int, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def describe(self, seed: int) -> str:
        """The ``sampling`` figure: "greedy", or the settings with the seed the generator was given."""
        if self.greedy:
            return "greedy"
        return f"T={self.temperature} top_k={self.top_k} top_p={self.top_p} seed={seed}"


def choose_next(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> torch.Tensor:
    """logits [batch, vocab] -> token ids [batch]."""
    logits = logits.float().clone()
    if params.suppress_token_ids:
        logits[:, list(params.suppress_token_ids)] = float("-inf")
    if params.greedy:
        return logits.argmax(-1)
    logits = logits / params.temperature
    if params.top_k > 0:
        kth = torch.topk(logits, min(params.top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        ordered, order = logits.sort(-1, descending=True)
        cumulative = ordered.softmax(-1).cumsum(-1)
        drop = cumulative - ordered.softmax(-1) > params.top_p  # keep the smallest prefix reaching top_p
        logits = logits.scatter(-1, order, ordered.masked_fill(drop, float("-inf")))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]


def generate(
    prompts: list[list[int]],
    params: SamplingParams,
    *,
    context_graphs: dict[int, Graph],
    token_graphs: dict[int, Graph],
    reset_cache: Callable[[], None],
    batch_size: int,
    max_seq_len: int,
    pad_id: int = 0,
) -> GenerationResult:
    used: set[str] = set()
    prefill = decoder_prefill(context_graphs, batch_size, max_seq_len, params.max_new_tokens, pad_id, used)
    return _generate_in_batches(prompts, params, prefill, token_graphs, reset_cache, batch_size, used)


def decoder_prefill(context_graphs, batch_size, max_seq_len, max_new_tokens, pad_id, used):
    """Decoder-only prefill: the prompts of one static batch, right-padded to the smallest context
    bucket that holds the longest; returns (next-token logits [batch, vocab], lengths [batch], graph)."""
    context_buckets = sorted(context_graphs)

    def prefill(group: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, str]:
        rows = group + [group[0]] * (batch_size - len(group))  # fill the static batch
        lengths = torch.tensor([len(r) for r in rows])
        longest = int(lengths.max())
        if longest + max_new_tokens > max_seq_len:
            raise StageFailure(
                f"prompt ({longest} tokens) + {max_new_tokens} new tokens exceeds port.max_seq_len ({max_seq_len})"
            )
        bucket = smallest_fitting(longest, context_buckets)
        if bucket is None:
            raise StageFailure(
                f"a prompt of {longest} tokens does not fit the largest context bucket ({context_buckets[-1]}); "
                "raise port.context_buckets in the spec or shorten the prompts"
            )
        graph = f"context_encoding_{bucket}"
        used.add(graph)
        input_ids = torch.full((batch_size, bucket), pad_id, dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(row)
        positions = torch.arange(bucket).expand(batch_size, bucket).contiguous()
        logits = context_graphs[bucket](input_ids, positions)[torch.arange(batch_size), lengths - 1]
        check_finite(logits, f"of context encoding (bucket {bucket})", lengths - 1)
        return logits, lengths, graph

    return prefill


def score(
    sequences: list[list[int]],
    *,
    context_graphs: dict[int, Graph],
    reset_cache: Callable[[], None],
    batch_size: int,
    pad_id: int = 0,
) -> list[torch.Tensor]:
    """Teacher forcing: logits [len, vocab] of each whole sequence, from one context-encoding pass."""
    buckets = sorted(context_graphs)
    out = []
    for seq in sequences:
        bucket = smallest_fitting(len(seq), buckets)
        if bucket is None:
            raise StageFailure(
                f"a scored sequence of {len(seq)} tokens does not fit the largest context bucket ({buckets[-1]})"
            )
        input_ids = torch.full((batch_size, bucket), pad_id, dtype=torch.long)
        input_ids[:, : len(seq)] = torch.tensor(seq)
        positions = torch.arange(bucket).expand(batch_size, bucket).contiguous()
        reset_cache()
        out.append(context_graphs[bucket](input_ids, positions)[0, : len(seq)].float())
    return out


def _generate_in_batches(
    prompts: list[list[int]],
    params: SamplingParams,
    prefill: Prefill,
    token_graphs: dict[int, Graph],
    reset_cache: Callable[[], None],
    batch_size: int,
    used: set[str],
) -> GenerationResult:
    """One static batch of prompts at a time: ``prefill(group)`` runs context encoding on a fresh cache
    and returns each row's next-token logits [batch, vocab], the position its first new token is
    written at [batch] and the graph it ran; token generation follows. Times the first batch's first token and all decoding."""
    generator = torch.Generator().manual_seed(params.seed)
    tokens: list[list[int]] = []
    ttft = decode_s = 0.0
    steps = 0
    start = time.perf_counter()
    for first in range(0, len(prompts), batch_size):
        group = prompts[first : first + batch_size]
        reset_cache()
        t0 = time.perf_counter()
        logits, positions, _ = prefill(group)
        next_ids = choose_next(logits, params, generator)
        if first == 0:
            ttft = time.perf_counter() - t0
        t1 = time.perf_counter()
        out, taken = _decode(next_ids, positions, params, generator, token_graphs, used)
        steps += taken
        decode_s += time.perf_counter() - t1
        tokens.extend(_cut_at_eos(out[i].tolist(), params.eos_token_id) for i in range(len(group)))
    return GenerationResult(
        tokens=tokens,
        ttft_s=ttft,
        decode_s=decode_s,
        decode_steps=steps,
        total_s=time.perf_counter() - start,
        buckets_used=sorted(used),
        sampling=params.describe(generator.initial_seed()),
    )


def _decode(next_ids, start, params, generator, token_graphs, used) -> tuple[torch.Tensor, int]:
    """Token generation after context encoding: ``next_ids`` [batch] is the first new token, written at
    position ``start`` [batch]; each step runs the smallest token-generation bucket that reaches it.
    Returns the new tokens [batch, n] and the number of token-generation steps run."""
    buckets = sorted(token_graphs)
    generated = [next_ids]
    finished = _hit_eos(next_ids, params)
    steps = 0
    for step in range(1, params.max_new_tokens):
        if bool(finished.all()):
            break
        position = (start + step - 1)[:, None]
        reach = smallest_fitting(int(position.max()) + 1, buckets)
        used.add(f"token_generation_{reach}")
        logits = token_graphs[reach](next_ids[:, None], position)[:, -1]
        check_finite(logits, f"at decode step {step}, bucket {reach}", position[:, 0])
        next_ids = choose_next(logits, params, generator)
        generated.append(next_ids)
        finished |= _hit_eos(next_ids, params)
        steps += 1
    return torch.stack(generated, dim=1), steps


def check_finite(logits: torch.Tensor, where: str, positions: torch.Tensor) -> None:
    """Fail naming ``where`` when next-token logits [batch, vocab] hold NaN or +Inf, or a row has no
    finite value at all (-Inf alone masks a token and is allowed): otherwise argmax picks a NaN's
    token and the fault shows up only later, as "degenerate output"."""
    bad = torch.isnan(logits).any(-1) | torch.isposinf(logits).any(-1) | ~torch.isfinite(logits).any(-1)
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        kind = "NaN" if bool(torch.isnan(logits[row]).any()) else "Inf"
        raise StageFailure(
            f"NaN/Inf in the logits {where}: {kind} in batch row {row} at position {int(positions[row])}"
        )


def _hit_eos(ids: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    if params.eos_token_id is None:
        return torch.zeros_like(ids, dtype=torch.bool)
    return ids == params.eos_token_id


def _cut_at_eos(tokens: list[int], eos: int | None) -> list[int]:
    if eos is not None and eos in tokens:
        return tokens[: tokens.index(eos) + 1]
    return tokens


# -- encoder-decoder ---------------------------------------------------------------------------------
EncoderGraph = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (input_ids, attention_mask) -> hidden
# (decoder_input_ids, position_ids, encoder_hidden, encoder_mask) -> logits; fills the cross-attention cache
DecoderContextGraph = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def encode_sources(
    sources: list[list[int]],
    encoder_graphs: dict[int, EncoderGraph],
    *,
    batch_size: int,
    max_seq_len: int,
    pad_id: int,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Run the encoder graph of the smallest fitting bucket over ``sources`` (one static batch);
    returns (encoder output, mask) padded to ``max_seq_len`` source slots, and the bucket used."""
    buckets = sorted(encoder_graphs)
    rows = sources + [sources[0]] * (batch_size - len(sources))
    longest = max(len(r) for r in rows)
    bucket = smallest_fitting(longest, buckets)
    if bucket is None:
        raise StageFailure(
            f"an encoder input of {longest} tokens does not fit the largest context bucket ({buckets[-1]}); "
            "raise port.context_buckets in the spec or shorten the prompts"
        )
    input_ids = torch.full((batch_size, bucket), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row)
    lengths = torch.tensor([len(r) for r in rows])
    mask = (torch.arange(bucket)[None, :] < lengths[:, None]).long()
    hidden = encoder_graphs[bucket](input_ids, mask)
    padded = hidden.new_zeros(batch_size, max_seq_len, hidden.shape[-1])
    padded[:, :bucket] = hidden
    padded_mask = torch.zeros(batch_size, max_seq_len, dtype=torch.long)
    padded_mask[:, :bucket] = mask
    return padded, padded_mask, bucket


def generate_seq2seq(
    prompts: list[list[int]],
    params: SamplingParams,
    *,
    encoder_graphs: dict[int, EncoderGraph],
    context_graphs: dict[int, DecoderContextGraph],
    token_graphs: dict[int, Graph],
    reset_cache: Callable[[], None],
    batch_size: int,
    max_seq_len: int,
    decoder_start_id: int,
    pad_id: int = 0,
) -> GenerationResult:
    """Encoder once per prompt, decoder context encoding of the start token (which fills the
    cross-attention cache), then one token-generation step per new token through the decoder KV cache."""
    used: set[str] = set()
    prefill = seq2seq_prefill(
        encoder_graphs,
        context_graphs,
        batch_size,
        max_seq_len,
        params.max_new_tokens,
        decoder_start_id,
        pad_id,
        used,
    )
    return _generate_in_batches(prompts, params, prefill, token_graphs, reset_cache, batch_size, used)


def seq2seq_prefill(
    encoder_graphs, context_graphs, batch_size, max_seq_len, max_new_tokens, decoder_start_id, pad_id, used
):
    """Encoder-decoder prefill: encode the sources, then decoder context encoding of the start token
    (which fills the cross-attention cache); the first new token is written at position 1."""
    if 1 + max_new_tokens > max_seq_len:
        raise StageFailure(
            f"the decoder start token + {max_new_tokens} new tokens exceeds port.max_seq_len ({max_seq_len})"
        )
    first_bucket = min(context_graphs)
    graph = f"context_encoding_{first_bucket}"

    def prefill(group: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, str]:
        encoder_hidden, encoder_mask, bucket = encode_sources(
            group, encoder_graphs, batch_size=batch_size, max_seq_len=max_seq_len, pad_id=pad_id
        )
        used.update({f"encoder_{bucket}", graph})
        decoder_ids = torch.full((batch_size, first_bucket), pad_id, dtype=torch.long)
        decoder_ids[:, 0] = decoder_start_id
        positions = torch.arange(first_bucket).expand(batch_size, first_bucket).contiguous()
        logits = context_graphs[first_bucket](decoder_ids, positions, encoder_hidden, encoder_mask)[:, 0]
        check_finite(logits, f"of decoder context encoding (bucket {first_bucket})", torch.zeros(batch_size))
        return logits, torch.ones(batch_size, dtype=torch.long), graph

    return prefill


def score_seq2seq(
    sources: list[list[int]],
    sequences: list[list[int]],
    *,
    encoder_graphs: dict[int, EncoderGraph],
    context_graphs: dict[int, DecoderContextGraph],
    reset_cache: Callable[[], None],
    batch_size: int,
    max_seq_len: int,
    pad_id: int = 0,
) -> list[torch.Tensor]:
    """Teacher forcing: logits [len, vocab] of each decoder sequence (start token first) given its
    encoder input, from one encoder pass and one decoder context-encoding pass."""
    buckets = sorted(context_graphs)
    out = []
    for source, seq in zip(sources, sequences):
        bucket = smallest_fitting(len(seq), buckets)
        if bucket is None:
            raise StageFailure(
                f"a scored decoder sequence of {len(seq)} tokens does not fit the largest context bucket ({buckets[-1]})"
            )
        reset_cache()
        encoder_hidden, encoder_mask, _ = encode_sources(
            [source], encoder_graphs, batch_size=batch_size, max_seq_len=max_seq_len, pad_id=pad_id
        )
        decoder_ids = torch.full((batch_size, bucket), pad_id, dtype=torch.long)
        decoder_ids[:, : len(seq)] = torch.tensor(seq)
        positions = torch.arange(bucket).expand(batch_size, bucket).contiguous()
        logits = context_graphs[bucket](decoder_ids, positions, encoder_hidden, encoder_mask)
        out.append(logits[0, : len(seq)].float())
    return out
