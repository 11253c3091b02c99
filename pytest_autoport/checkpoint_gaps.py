"""Which tensors the HF model class has that the checkpoint lacks: told apart from a conversion fault
when the weights stage finds port tensors unfilled (transformers would initialise those at random)."""

from __future__ import annotations

import re


def checkpoint_gaps(hf_model_class: str, hf_config, checkpoint_keys) -> list[str]:
    """Keys of ``hf_model_class`` built from ``hf_config`` (on the meta device: no memory) missing from
    ``checkpoint_keys``, leaving out tied weights and the keys the class lets be missing."""
    import torch
    import transformers

    cls = getattr(transformers, hf_model_class)
    with torch.device("meta"):
        model = cls(hf_config)
    tied = model._tied_weights_keys or ()
    allowed = [re.compile(p) for p in (getattr(model, "_keys_to_ignore_on_load_missing", None) or ())]
    if getattr(hf_config, "tie_word_embeddings", False):
        allowed += [re.compile(f"^{re.escape(k)}$") for k in tied]
    present = set(checkpoint_keys)
    return sorted(
        key for key in model.state_dict() if key not in present and not any(p.search(key) for p in allowed)
    )


def gaps_note(session) -> str:
    """A line for the weights stage's failure when the checkpoint lacks tensors its HF class has
    ("" when it lacks none, in reduced-layer mode, or when the class cannot be built here)."""
    if session.layers_record is not None:
        return ""
    try:
        gaps = checkpoint_gaps(session.spec.model.hf_model_class, session.hf_config, session.hf_state_dict)
    except Exception:  # a note only: a class that does not build on the meta device adds none
        return ""
    if not gaps:
        return ""
    shown = ", ".join(gaps[:6]) + (f" and {len(gaps) - 6} more" if len(gaps) > 6 else "")
    return (
        f"\n  the checkpoint itself lacks {len(gaps)} tensor(s) {session.spec.model.hf_model_class} has "
        f"(transformers would initialise them at random): {shown}"
    )
