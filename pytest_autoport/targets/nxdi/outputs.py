"""Reading outputs from NxDI modules: the primary tensor of a module's output, and per-position logits."""

from __future__ import annotations

import torch

from ...errors import StageFailure
from .generation import context_inputs
from .runtime import step


def first_tensor(value) -> torch.Tensor | None:
    """The primary output of an NxDI module: a tensor, ``.hidden_states`` (attention), or a tuple's head;
    None where the output holds none of these."""
    if isinstance(value, torch.Tensor):
        return value
    hidden = getattr(value, "hidden_states", None)
    if isinstance(hidden, torch.Tensor):
        return hidden
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    return None


def context_encoding_logits(app, model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """Float logits at every position of one context-encoding pass of ``app`` (``model`` is its
    NeuronBaseModel).

    NxDI keeps only the last position's logits, so the normed hidden states of all positions are
    taken from ``model.norm`` and put through the model's own ``lm_head``."""
    batch, length = input_ids.shape
    seen = []
    handle = model.norm.register_forward_hook(lambda module, args, out: seen.append(first_tensor(out)))
    try:
        with step("context-encoding forward (reset(), then forward from position 0)"):
            app.reset()
            app(**context_inputs(input_ids))
    finally:
        handle.remove()
    if not seen:
        raise StageFailure(
            "nxdi: the port's norm never ran in the forward pass; cannot read per-position logits"
        )
    return first_tensor(model.lm_head(seen[0][:batch, :length])).float()
