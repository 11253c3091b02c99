"""Other forms an HF module's output takes in some transformers versions (``components[].hf_output_forms``).

A component check compares the port module's output with the HF module's first output tensor. Some HF
modules changed what that tensor is between transformers versions while the port keeps one convention:
GPT-OSS's router returns its logits on transformers 5.x but, on 4.x, the softmax of each token's top-k
logits scattered into a dense [tokens, experts] tensor. A form names such a derived output; where the HF
output has the form's signature (and the port's does not), the port's output is brought into that form
before the comparison, so the port is still judged on everything the HF output carries.

Forms:

- ``topk_softmax_scores``: HF's output is, per token, the softmax over its k largest values of the port's
  output (the router logits) at those experts and zero at the others, [tokens, experts]. Signature: no
  negative value, at most k non-zero values a row, rows summing to 1; k is the largest non-zero count
  of a row and must be below the number of experts.
"""

from __future__ import annotations

import math

FORMS = ("topk_softmax_scores",)
ROW_SUM_TOLERANCE = 0.05  # a bfloat16 softmax over a few values sums to 1 within a few ulps


def topk_count(scores) -> int | None:
    """k when ``scores`` [..., experts] has the ``topk_softmax_scores`` signature, else None."""
    import torch

    if not scores.is_floating_point() or scores.dim() < 1 or scores.numel() == 0:
        return None
    rows = scores.detach().float().reshape(-1, scores.shape[-1])
    nonzero = (rows != 0).sum(dim=-1)
    k = int(nonzero.max())
    if not 0 < k < rows.shape[-1] or bool((rows < 0).any()) or not bool(torch.isfinite(rows).all()):
        return None
    if float((rows.sum(dim=-1) - 1).abs().max()) > ROW_SUM_TOLERANCE:
        return None
    return k


def to_topk_softmax_scores(logits, k: int, shape):
    """Port logits [..., experts] -> the softmax over each row's top-k, zero elsewhere, in ``shape``."""
    import torch

    rows = logits.reshape(-1, logits.shape[-1])
    top, experts = torch.topk(rows, k, dim=-1)
    weights = torch.softmax(top, dim=-1, dtype=top.dtype)
    dense = torch.zeros_like(rows).scatter(-1, experts, weights)
    return dense.reshape(shape) if dense.numel() == math.prod(shape) else dense


def align(component, port_out, hf_out) -> tuple:
    """(the port's output in the form HF's output has, the form's name or "" when compared as is)."""
    for form in component.hf_output_forms:
        if form == "topk_softmax_scores":
            k = topk_count(hf_out)
            if k is not None and topk_count(port_out) is None and port_out.shape[-1] == hf_out.shape[-1]:
                return to_topk_softmax_scores(port_out, k, hf_out.shape), form
    return port_out, ""
