"""Generation over static-shape graphs: pad to a context bucket, then decode one token at a time
through the token-generation graph of the smallest bucket that reaches the current position.

Target-independent: a target hands in its graphs and a cache reset; this module picks buckets,
pads, batches, samples and times.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .buckets import smallest_fitting
from .errors import StageFailure
from .targets.base import GenerationResult

Graph = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (input_ids, position_ids) -> logits
# one static batch of prompts -> (next-token logits [batch, vocab], first new position [batch], graph name)
Prefill = Callable[[list[list[int]]], tuple[torch.Tensor, torch.Tensor, str]]
EncoderGraph = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (input_ids, attention_mask) -> hidden
# (decoder_input_ids, position_ids, encoder_hidden, encoder_mask) -> logits; fills the cross-attention cache
DecoderContextGraph = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class StaticGraphs:
    """A target's static-shape graphs by bucket, and what every run over them needs.

    With ``encoder`` graphs the port is an encoder-decoder: ``context`` are then the decoder's
    context-encoding graphs (they take the encoder output and fill the cross-attention cache) and
    decoding starts from ``decoder_start_id``."""

    context: dict[int, Graph] | dict[int, DecoderContextGraph]
    reset_cache: Callable[[], None]
    batch_size: int
    max_seq_len: int
    token: dict[int, Graph] = field(default_factory=dict)
    pad_id: int = 0
    encoder: dict[int, EncoderGraph] | None = None
    decoder_start_id: int = 0

    def prefill(self, max_new_tokens: int, used: set[str]) -> Prefill:
        """Context encoding of one static batch, room left for ``max_new_tokens``; adds the graphs it
        runs to ``used``."""
        if self.encoder is None:
            return decoder_prefill(self, max_new_tokens, used)
        return seq2seq_prefill(self, max_new_tokens, used)


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


def generate(prompts: list[list[int]], params: SamplingParams, graphs: StaticGraphs) -> GenerationResult:
    """Context encoding of each static batch of prompts, then one token-generation step per new token
    through the KV cache (encoder-decoder: the encoder first, then the decoder from its start token)."""
    used: set[str] = set()
    prefill = graphs.prefill(params.max_new_tokens, used)
    return _generate_in_batches(prompts, params, prefill, graphs, used)


def fill_static_batch(group: list, batch_size: int) -> list:
    """``group`` padded to the static batch by repeating its first row."""
    return group + [group[0]] * (batch_size - len(group))


def check_room(longest: int, max_new_tokens: int, max_seq_len: int) -> None:
    if longest + max_new_tokens > max_seq_len:
        raise StageFailure(
            f"prompt ({longest} tokens) + {max_new_tokens} new tokens exceeds port.max_seq_len ({max_seq_len})"
        )


def positions_of(batch_size: int, length: int) -> torch.Tensor:
    return torch.arange(length).expand(batch_size, length).contiguous()


def padded_ids(rows: list[list[int]], batch_size: int, length: int, pad_id: int) -> torch.Tensor:
    """[batch_size, length] ids, each row right-padded with ``pad_id`` (``rows`` fill the first rows)."""
    input_ids = torch.full((batch_size, length), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row)
    return input_ids


def decoder_prefill(graphs: StaticGraphs, max_new_tokens: int, used: set[str]) -> Prefill:
    """Decoder-only prefill: the prompts of one static batch, right-padded to the smallest context
    bucket that holds the longest; returns (next-token logits [batch, vocab], lengths [batch], graph)."""
    context_buckets = sorted(graphs.context)
    batch_size = graphs.batch_size

    def prefill(group: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, str]:
        rows = fill_static_batch(group, batch_size)
        lengths = torch.tensor([len(r) for r in rows])
        longest = int(lengths.max())
        check_room(longest, max_new_tokens, graphs.max_seq_len)
        bucket = smallest_fitting(longest, context_buckets)
        if bucket is None:
            raise StageFailure(
                f"a prompt of {longest} tokens does not fit the largest context bucket ({context_buckets[-1]}); "
                "raise port.context_buckets in the spec or shorten the prompts"
            )
        graph = f"context_encoding_{bucket}"
        used.add(graph)
        input_ids = padded_ids(rows, batch_size, bucket, graphs.pad_id)
        logits = graphs.context[bucket](input_ids, positions_of(batch_size, bucket))
        logits = logits[torch.arange(batch_size), lengths - 1]
        check_finite(logits, f"of context encoding (bucket {bucket})", lengths - 1)
        return logits, lengths, graph

    return prefill


def score(
    sequences: list[list[int]], graphs: StaticGraphs, sources: list[list[int]] | None = None
) -> list[torch.Tensor]:
    """Teacher forcing: logits [len, vocab] of each whole sequence, from one context-encoding pass
    (encoder-decoder: each decoder sequence, start token first, given its encoder input in ``sources``,
    after one encoder pass)."""
    buckets = sorted(graphs.context)
    batch_size = graphs.batch_size
    what = "a scored sequence" if graphs.encoder is None else "a scored decoder sequence"
    pairs = zip(sources, sequences) if graphs.encoder is not None else ((None, seq) for seq in sequences)
    out = []
    for source, seq in pairs:
        bucket = smallest_fitting(len(seq), buckets)
        if bucket is None:
            raise StageFailure(
                f"{what} of {len(seq)} tokens does not fit the largest context bucket ({buckets[-1]})"
            )
        graphs.reset_cache()
        input_ids = padded_ids([seq] * batch_size, batch_size, bucket, graphs.pad_id)
        args = (input_ids, positions_of(batch_size, bucket))
        if source is not None:
            args += encode_sources([source], graphs)[:2]
        out.append(graphs.context[bucket](*args)[0, : len(seq)].float())
    return out


def _generate_in_batches(
    prompts: list[list[int]],
    params: SamplingParams,
    prefill: Prefill,
    graphs: StaticGraphs,
    used: set[str],
) -> GenerationResult:
    """One static batch of prompts at a time: ``prefill(group)`` runs context encoding on a fresh cache
    and returns each row's next-token logits [batch, vocab], the position its first new token is
    written at [batch] and the graph it ran; token generation follows. Times the first batch's first token and all decoding."""
    generator = torch.Generator().manual_seed(params.seed)
    tally = GenerationTally()
    for first in range(0, len(prompts), graphs.batch_size):
        group = prompts[first : first + graphs.batch_size]
        graphs.reset_cache()
        t0 = time.perf_counter()
        logits, positions, _ = prefill(group)
        next_ids = choose_next(logits, params, generator)
        if first == 0:
            tally.ttft_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        out, taken = _decode(next_ids, positions, params, generator, graphs.token, used)
        tally.decode_steps += taken
        tally.decode_s += time.perf_counter() - t1
        tally.tokens.extend(cut_at_eos(out[i].tolist(), params.eos_token_id) for i in range(len(group)))
    return tally.result(used, params.describe(generator.initial_seed()))


@dataclass
class GenerationTally:
    """Figures of a generation run, added up batch by batch; the clock starts at creation."""

    tokens: list[list[int]] = field(default_factory=list)
    ttft_s: float = 0.0
    decode_s: float = 0.0
    decode_steps: int = 0
    started: float = field(default_factory=time.perf_counter)

    def result(self, used: set[str], sampling: str) -> GenerationResult:
        """``sampling``: the settings and seed the generator drew with (``SamplingParams.describe``)."""
        return GenerationResult(
            tokens=self.tokens,
            ttft_s=self.ttft_s,
            decode_s=self.decode_s,
            decode_steps=self.decode_steps,
            total_s=time.perf_counter() - self.started,
            buckets_used=sorted(used),
            sampling=sampling,
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
        reach = token_bucket(position, buckets)
        used.add(f"token_generation_{reach}")
        logits = token_graphs[reach](next_ids[:, None], position)[:, -1]
        check_finite(logits, f"at decode step {step}, bucket {reach}", position[:, 0])
        next_ids = choose_next(logits, params, generator)
        generated.append(next_ids)
        finished |= _hit_eos(next_ids, params)
        steps += 1
    return torch.stack(generated, dim=1), steps


def token_bucket(position: torch.Tensor, buckets: list[int]) -> int:
    """The smallest token-generation bucket whose cache reaches every row's ``position`` [batch, 1]."""
    reach = smallest_fitting(int(position.max()) + 1, buckets)
    if reach is None:
        raise StageFailure(
            f"decode position {int(position.max())} is beyond the largest token-generation bucket ({buckets[-1]})"
        )
    return reach


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


def cut_at_eos(tokens: list[int], eos: int | None) -> list[int]:
    if eos is not None and eos in tokens:
        return tokens[: tokens.index(eos) + 1]
    return tokens


# -- encoder-decoder ---------------------------------------------------------------------------------
def encode_sources(sources: list[list[int]], graphs: StaticGraphs) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Run the encoder graph of the smallest fitting bucket over ``sources`` (one static batch);
    returns (encoder output, mask) padded to ``max_seq_len`` source slots, and the bucket used."""
    buckets = sorted(graphs.encoder)
    batch_size, max_seq_len = graphs.batch_size, graphs.max_seq_len
    rows = fill_static_batch(sources, batch_size)
    longest = max(len(r) for r in rows)
    bucket = smallest_fitting(longest, buckets)
    if bucket is None:
        raise StageFailure(
            f"an encoder input of {longest} tokens does not fit the largest context bucket ({buckets[-1]}); "
            "raise port.context_buckets in the spec or shorten the prompts"
        )
    input_ids = padded_ids(rows, batch_size, bucket, graphs.pad_id)
    lengths = torch.tensor([len(r) for r in rows])
    mask = (torch.arange(bucket)[None, :] < lengths[:, None]).long()
    hidden = graphs.encoder[bucket](input_ids, mask)
    padded = hidden.new_zeros(batch_size, max_seq_len, hidden.shape[-1])
    padded[:, :bucket] = hidden
    padded_mask = torch.zeros(batch_size, max_seq_len, dtype=torch.long)
    padded_mask[:, :bucket] = mask
    return padded, padded_mask, bucket


def seq2seq_prefill(graphs: StaticGraphs, max_new_tokens: int, used: set[str]) -> Prefill:
    """Encoder-decoder prefill: encode the sources, then decoder context encoding of the start token
    (which fills the cross-attention cache); the first new token is written at position 1."""
    if 1 + max_new_tokens > graphs.max_seq_len:
        raise StageFailure(
            f"the decoder start token + {max_new_tokens} new tokens exceeds port.max_seq_len ({graphs.max_seq_len})"
        )
    first_bucket = min(graphs.context)
    graph = f"context_encoding_{first_bucket}"
    batch_size = graphs.batch_size

    def prefill(group: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, str]:
        encoder_hidden, encoder_mask, bucket = encode_sources(group, graphs)
        used.update({f"encoder_{bucket}", graph})
        decoder_ids = padded_ids(
            [[graphs.decoder_start_id]] * batch_size, batch_size, first_bucket, graphs.pad_id
        )
        positions = positions_of(batch_size, first_bucket)
        logits = graphs.context[first_bucket](decoder_ids, positions, encoder_hidden, encoder_mask)[:, 0]
        check_finite(logits, f"of decoder context encoding (bucket {first_bucket})", torch.zeros(batch_size))
        return logits, torch.ones(batch_size, dtype=torch.long), graph

    return prefill


def spec_sampling(spec, tokenizer) -> SamplingParams:
    """The ``generate`` stage's settings: the spec's ``[generation]`` table, special tokens other than
    EOS suppressed when it asks so."""
    g = spec.generation
    special = tuple(sorted(set(tokenizer.all_special_ids) - {tokenizer.eos_token_id}))
    return SamplingParams(
        max_new_tokens=g.max_new_tokens or spec.validation.num_tokens_to_check,
        temperature=g.temperature,
        top_k=g.top_k,
        top_p=g.top_p,
        seed=g.seed,
        eos_token_id=tokenizer.eos_token_id if g.stop_at_eos else None,
        suppress_token_ids=special if g.suppress_special_tokens else (),
    )
