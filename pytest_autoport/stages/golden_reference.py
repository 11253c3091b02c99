"""Which reference the golden stage scores against, and which sequence it scores.

Default: the FP32 HF model held whole, scoring its own free-running greedy continuation (both kept in
the golden cache, ``golden_cache``).
``--autoport-golden-streaming``: the HF model streamed one decoder layer at a time
(``streaming_reference``), scoring the port's own greedy continuation, so that no HF generation (one
full forward per new token) is needed and a model larger than memory can still be judged.
"""

from __future__ import annotations

import torch

from ..errors import AutoportError


def streaming(session) -> bool:
    if not getattr(session.options, "golden_streaming", False):
        return False
    if session.is_encoder_decoder:
        raise AutoportError(
            f"--autoport-golden-streaming scores decoder-only models; {session.spec.model.hf_model_class} "
            "is an encoder-decoder model (run the golden without it)"
        )
    return True


def streamed_windows(session, continuations: list[list[int]], dtype) -> list[torch.Tensor]:
    """The streamed reference's logits predicting each continuation token after its prompt."""
    sequences = [prompt + tokens for prompt, tokens in zip(session.prompt_ids, continuations)]
    scores = session.streaming_reference(dtype).score(sequences)
    return [
        logits[len(prompt) - 1 : len(prompt) - 1 + len(tokens)]
        for logits, prompt, tokens in zip(scores, session.prompt_ids, continuations)
    ]


def reference_figures(session) -> dict:
    """Additive golden figures naming the reference and the scored sequence."""
    if streaming(session):
        return {"reference": "streaming", "scored_sequence": "port_greedy"}
    return {"reference": "hf", "scored_sequence": "hf_greedy"}


def reference_note(session) -> str:
    """The prefix of a golden failure message in streaming mode (empty otherwise)."""
    if not streaming(session):
        return ""
    return (
        "[streaming FP32 reference, one decoder layer at a time; scored sequence: the port's own greedy "
        "continuation, each token checked against the reference's argmax after the port's prefix] "
    )
