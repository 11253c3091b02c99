"""Generation and teacher-forced scoring through an NxDI application (CPU or device).

Generation goes through NxDI's ``HuggingFaceGenerationAdapter``: context encoding, then one
token-generation step per new token through the KV cache. Sampling is done by NxDI's own
``Sampler`` alone (see ``sampling_setup``).
"""

from __future__ import annotations

import time

import torch

from ...errors import StageFailure
from ...generation import GenerationTally, SamplingParams, check_room, cut_at_eos, fill_static_batch
from ...spec import PortSpec
from ..base import GenerationResult
from .config import nxdi_bucket
from .runtime import NXDI, nxdi, step


def generate_kwargs(params: SamplingParams, pad_id: int) -> dict:
    """``HuggingFaceGenerationAdapter.generate`` arguments for the harness's sampling settings.

    HF's own logits warpers are never asked for (``do_sample=False``): with ``do_sample=True`` HF
    would apply temperature / top-k / top-p, and NxDI's sampler, fed the same generation config,
    would apply them a second time. The sampling values still travel in the generation config,
    because the adapter builds NxDI's ``sampling_params`` from it; ``sampling_setup`` supplies the
    sampler that uses them."""
    kwargs = {"max_new_tokens": params.max_new_tokens, "do_sample": False, "pad_token_id": pad_id}
    if params.eos_token_id is None:  # exactly that many tokens, as NxDI's accuracy check and the HF golden do
        kwargs["min_new_tokens"] = params.max_new_tokens
    else:
        kwargs["eos_token_id"] = params.eos_token_id
    if params.suppress_token_ids:
        kwargs["suppress_tokens"] = list(params.suppress_token_ids)
    return kwargs


def nxdi_top_k(params: SamplingParams, vocab_size: int) -> int:
    """NxDI's sampler reads top_k = 0 or -1 as "uniform over its window", not "no filter": no
    filter is top_k = vocabulary size."""
    return params.top_k if 0 < params.top_k <= vocab_size else vocab_size


def sampling_setup(params: SamplingParams, vocab_size: int):
    """(generation-config values, NxDI Sampler) for sampled generation, or (None, None) for greedy.

    The sampler is NxDI's ``Sampler`` with ``do_sample=True`` and ``global_topk=0`` (a full sort: its
    CPU default of 256 would cut the vocabulary to the 256 best tokens first). It applies top-k,
    then temperature, then top-p (NxDI's rule: a token is dropped once the cumulative probability
    before it exceeds top_p; the best token always stays), then draws from ``torch.rand``."""
    if params.greedy:
        return None, None
    config_module = nxdi(f"{NXDI}.models.config")
    sampling = nxdi(f"{NXDI}.modules.generation.sampling")
    top_k = nxdi_top_k(params, vocab_size)
    sampler_config = config_module.NeuronConfig(
        on_device_sampling_config=config_module.OnDeviceSamplingConfig(top_k=top_k, global_topk=0)
    )
    sampler_config.on_cpu = True
    sampler = sampling.Sampler(sampler_config, do_sample=True)
    values = {"temperature": params.temperature, "top_k": top_k, "top_p": params.top_p}
    return values, sampler


def right_padded(rows: list[list[int]], length: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) [len(rows), length] of a prompt batch, padded on the right (NxDI's
    default ``padding_side``): each row's tokens from column 0, mask ones over them alone."""
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return input_ids, mask


def context_inputs(ids: torch.Tensor) -> dict:
    """``forward`` arguments of a context encoding of unpadded rows ``ids`` [batch, n]: positions
    0..n-1, a mask of ones over all n, one KV-cache line per row (seq ids 0..batch-1)."""
    batch, length = ids.shape
    return {
        "input_ids": ids,
        "attention_mask": torch.ones(batch, length, dtype=torch.long),
        "position_ids": torch.arange(length).expand(batch, length),
        "seq_ids": torch.arange(batch),
    }


def token_generation_inputs(ids: torch.Tensor, t: int) -> dict:
    """``forward`` arguments of the token-generation step that feeds column ``t`` of ``ids``: that one
    token at position t, after t cached positions (the adapter's mask: t ones at position t)."""
    batch = ids.shape[0]
    return {
        "input_ids": ids[:, t : t + 1],
        "attention_mask": torch.ones(batch, t, dtype=torch.long),
        "position_ids": torch.full((batch, 1), t),
        "seq_ids": torch.arange(batch),
    }


class NxdiCompiledModel:
    """A NxDI application ready to generate: loaded on device, or the CPU-mode application.

    ``path`` ("device" or "cpu") is reported with the figures; ``buckets`` are the application's
    (context-encoding, token-generation) buckets, from which the graph of each call is named."""

    def __init__(self, app, spec: PortSpec, pad_id: int = 0, *, path: str = "device", buckets=None):
        self.app = app
        self.spec = spec
        self.pad_id = pad_id
        self.path = path
        self.context_buckets, self.token_buckets = buckets or (
            list(spec.port.context_bucket_list),
            list(spec.port.token_bucket_list),
        )
        self.calls: list[tuple[str, float]] = []  # (graph name, seconds) of each forward
        forward = app.forward

        def timed_forward(*args, **kwargs):
            graph = self._graph_of(kwargs)
            start = time.perf_counter()
            out = forward(*args, **kwargs)
            self.calls.append((graph, time.perf_counter() - start))
            return out

        app.forward = timed_forward  # the adapter takes app.forward when it is built, below
        hf_adapter = nxdi(f"{NXDI}.utils.hf_adapter")
        with step("HuggingFaceGenerationAdapter(app)"):
            self.adapter = hf_adapter.HuggingFaceGenerationAdapter(app)

    def _graph_of(self, kwargs) -> str:
        """The graph NxDI runs for a forward: context encoding from position 0, else token
        generation, in the bucket NxDI's ``get_target_bucket`` picks for the mask length."""
        positions = kwargs.get("position_ids")
        mask = kwargs.get("attention_mask")
        if positions is None or int(positions.min()) == 0:
            length = mask.shape[1] if mask is not None else positions.shape[1]
            return f"context_encoding_{nxdi_bucket(length, self.context_buckets)}"
        length = mask.shape[1] if mask is not None else int(positions.max())
        return f"token_generation_{nxdi_bucket(length, self.token_buckets)}"

    def _check_context_length(self, length: int) -> None:
        if nxdi_bucket(length, self.context_buckets) is None:
            raise StageFailure(
                f"a sequence of {length} tokens does not fit the largest context bucket "
                f"({self.context_buckets[-1]}); raise port.context_buckets in the spec or shorten the prompts"
            )

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], params: SamplingParams) -> GenerationResult:
        p = self.spec.port
        kwargs = generate_kwargs(params, self.pad_id)
        vocab = getattr(self.app.config, "vocab_size", None) or 0
        values, sampler = sampling_setup(params, vocab)
        if values:
            kwargs.update(values)
        tally = GenerationTally()
        used: set[str] = set()
        for first in range(0, len(prompts), p.batch_size):
            group = prompts[first : first + p.batch_size]
            rows = fill_static_batch(group, p.batch_size)
            longest = max(len(r) for r in rows)
            check_room(longest, params.max_new_tokens, p.max_seq_len)
            self._check_context_length(longest)
            input_ids, mask = right_padded(rows, longest, self.pad_id)
            if not params.greedy:
                torch.manual_seed(params.seed)  # NxDI's sampler draws from torch.rand
            self.adapter.sampler = sampler  # None: the adapter makes its own (greedy) one
            self.calls.clear()
            with step(f"HuggingFaceGenerationAdapter.generate(do_sample={not params.greedy})"):
                out = self.adapter.generate(input_ids, attention_mask=mask, **kwargs)
            sequences = getattr(out, "sequences", out)
            rows_out = [
                cut_at_eos(sequences[i, longest:].tolist(), params.eos_token_id) for i in range(len(group))
            ]
            decode = [(g, s) for g, s in self.calls if not g.startswith("context_encoding")]
            if max(len(r) for r in rows_out) > 1 and not decode:
                raise StageFailure(
                    "nxdi: generation never ran a token-generation graph (every forward started at position 0); "
                    "the KV cache was not exercised"
                )
            context = [(g, s) for g, s in self.calls if g.startswith("context_encoding")]
            if first == 0 and context:
                tally.ttft_s = context[0][1]
            used.update(g for g, _ in context + decode)
            tally.decode_s += sum(s for _, s in decode)
            tally.decode_steps += len(decode)
            tally.tokens.extend(rows_out)
        return tally.result(used, params.describe(torch.initial_seed()))

    @torch.inference_mode()
    def score(self, sequences: list[list[int]]) -> list[torch.Tensor]:
        """Teacher forcing through NxDI's graphs: logits [len, vocab] of each whole sequence.

        The first two tokens go through context encoding; every later position is one
        token-generation step fed the sequence's own token, with the attention mask the adapter
        uses (length t at position t), so every position is judged on the true context, through
        the KV cache. NxDI's context encoding returns only its last position, and a one-token
        context encoding returns a padding position (it picks the largest position id, and the
        padding's is 1), so position 0 is read from the model's final norm during that context
        encoding where the model runs eagerly (CPU); on device it is NaN (never a real logit)."""
        batch = self.spec.port.batch_size
        out = []
        for seq in sequences:
            if len(seq) > self.spec.port.max_seq_len:
                raise StageFailure(
                    f"a scored sequence of {len(seq)} tokens exceeds port.max_seq_len ({self.spec.port.max_seq_len})"
                )
            ids = torch.tensor([seq] * batch)  # every row of the static batch holds the sequence
            prefix = min(2, len(seq))
            with step("teacher-forced scoring (context encoding, then token generation)"):
                self.app.reset()
                hidden, result = self._context_encoding(ids[:, :prefix])
                logits = [self._position_zero(hidden, result)]
                if prefix == 2:
                    logits.append(result.logits[0, -1].float())
                for t in range(2, len(seq)):
                    result = self.app.forward(**token_generation_inputs(ids, t))
                    logits.append(result.logits[0, -1].float())
            out.append(torch.stack(logits))
        return out

    def decode_teacher_forced(self, prompts: list[list[int]], continuations: list[list[int]]):
        """Every decode step's logits, each continuation fed one token at a time: :meth:`score` runs
        every position after the second through the token-generation graphs (mask length t at t)."""
        from ...decode_forcing import DecodeLogits

        scored = self.score([p + c for p, c in zip(prompts, continuations)])
        out = DecodeLogits([], [], [])
        for prompt, cont, logits in zip(prompts, continuations, scored):
            positions = list(range(len(prompt) - 1, len(prompt) - 1 + len(cont)))
            out.logits.append(logits[positions[0] : positions[0] + len(cont)] if cont else logits[:0])
            out.positions.append(positions)
            out.graphs.append(
                [
                    f"token_generation_{nxdi_bucket(t, self.token_buckets)}"
                    if t >= 2
                    else f"context_encoding_{nxdi_bucket(2, self.context_buckets)}"  # score's 2-token prefix
                    for t in positions
                ]
            )
        return out

    def _eager_model(self):
        model = getattr(getattr(self.app, "context_encoding_model", None), "model", None)
        return model if isinstance(model, torch.nn.Module) and hasattr(model, "norm") else None

    def _context_encoding(self, ids: torch.Tensor):
        seen: list = []
        model = self._eager_model()
        handle = model.norm.register_forward_hook(lambda m, a, o: seen.append(o)) if model else None
        try:
            result = self.app.forward(**context_inputs(ids))
        finally:
            if handle is not None:
                handle.remove()
        return (seen[0] if seen else None), result

    def _position_zero(self, hidden, result) -> torch.Tensor:
        vocab = result.logits.shape[-1]
        if hidden is None:
            return torch.full((vocab,), float("nan"))
        hidden = hidden[0] if isinstance(hidden, (tuple, list)) else hidden
        logits = self._eager_model().lm_head(hidden[:1, :1])
        logits = logits[0] if isinstance(logits, (tuple, list)) else logits
        return logits[0, 0, :vocab].float()
