"""What a correct causal LM sees and answers, for the contract tests (they import it; no test here).

``toy_logits`` is the toy port as a causal LM over whole sequences, without a KV cache: what the
stand-in must give whatever path the harness takes through it, when the harness feeds it right.
``causal_lm_violations`` reads the stand-in's recorded ``app.forward`` calls and names every input
that breaks a causal LM's contract (padding side, positions, mask, seq ids).
"""

from __future__ import annotations

import torch


def toy_logits(port, ids: torch.Tensor) -> torch.Tensor:
    """The toy causal LM on whole sequences, without a KV cache: position i is token i at position i,
    plus the mean of positions 0..i (the stand-in's toy attention), then the port's layers."""
    from neuronx_distributed_inference.models.model_base import position_signal

    length = ids.shape[1]
    with torch.no_grad():
        hidden = port.embed_tokens(ids) + position_signal(
            torch.arange(length).expand_as(ids), port.config.hidden_size
        )
        hidden = hidden + hidden.cumsum(1) / torch.arange(1, length + 1)[None, :, None]
        for layer in port.layers:
            hidden = layer(hidden)[0]
        return port.lm_head(port.norm(hidden))


def greedy_reference(port, prompt: list[int], new: int) -> list[int]:
    seq = list(prompt)
    for _ in range(new):
        seq.append(int(toy_logits(port, torch.tensor([seq]))[0, -1].argmax()))
    return seq[len(prompt) :]


def causal_lm_violations(calls: list[dict], lengths: list[list[int]] | None = None) -> list[str]:
    """How the recorded ``app.forward`` calls break a causal LM's input contract (empty: none).

    Context encoding: right padding (each row's mask is ones, then zeros), positions 0..k-1 over a
    row's k tokens (``lengths``: the k of each row of each context encoding, where the test knows
    them). Token generation: one token per row, at the position that equals the row's number of
    cached positions, with a mask of ones over exactly those. Seq ids, where given, are 0..batch-1."""
    problems: list[str] = []
    cached: list[int] | None = None
    encodings = iter(lengths or [])
    for n, call in enumerate(calls):
        ids, mask, positions, seq_ids = (
            call[k] for k in ("input_ids", "attention_mask", "position_ids", "seq_ids")
        )
        where = f"forward #{n} ({call['kind']})"
        batch, length = ids.shape
        if seq_ids is not None and seq_ids.tolist() != list(range(batch)):
            problems.append(f"{where}: seq_ids {seq_ids.tolist()}, not 0..{batch - 1}")
        if call["kind"] == "context_encoding":
            cached = [int(k) for k in mask.sum(1)]
            expected = next(encodings, None)
            if expected is not None and cached != expected:
                problems.append(f"{where}: the mask covers {cached} tokens per row, not the rows' {expected}")
            for r, k in enumerate(cached):
                if mask[r].tolist() != [1] * k + [0] * (length - k):
                    problems.append(f"{where}: row {r} mask {mask[r].tolist()} is not right padding")
                if positions[r, :k].tolist() != list(range(k)):
                    problems.append(
                        f"{where}: row {r} positions {positions[r].tolist()} do not count 0..{k - 1}"
                    )
            continue
        if cached is None:
            problems.append(f"{where}: token generation before any context encoding")
            continue
        if length != 1:
            problems.append(f"{where}: {length} tokens per row, not one")
        for r in range(batch):
            t, k = int(positions[r, -1]), cached[r]
            if t != k:
                problems.append(f"{where}: row {r} at position {t}, but {k} positions are cached")
            if mask[r].tolist() != [1] * k + [0] * (mask.shape[1] - k):
                problems.append(
                    f"{where}: row {r} mask {mask[r].tolist()} is not ones over the {k} cached positions"
                )
            cached[r] = k + 1
    return problems
