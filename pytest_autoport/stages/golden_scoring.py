"""The golden stage's check of the context-encoding path at length: scoring parity.

The compiled port scores each prompt followed by its golden continuation in one context-encoding pass
(the teacher-forced match is read from these logits); every scored position's logits are compared with
HF's at the same position, as decode-step parity compares the token-generation path: strict in FP32, the
three-tensor ratio against HF run in the same low precision otherwise. A context-encoding fault that
moves some argmaxes, or none, fails here and not only in the reported teacher-forced match.
"""

from __future__ import annotations

import torch

from ..buckets import smallest_fitting
from ..checks import DEFAULT_BAND
from ..numerics_logits import DECODE_FP32_REL_TOL, judge_decode_steps_fp32, judge_decode_steps_ratio


def scoring_parity(
    session,
    scored: list[list[int]],
    hf_fp32: list[torch.Tensor],
    port: list[torch.Tensor],
    hf_lp: list[torch.Tensor] | None,
) -> tuple[dict, str | None]:
    """(figures, problem text or None) for the port's teacher-forced logits ``port`` against HF's in
    FP32 (``hf_fp32``) and, for a low-precision port, in its precision (``hf_lp``, else None)."""
    if hf_lp is None:
        figures = {"mode": "fp32", **judge_decode_steps_fp32(port, hf_fp32, DECODE_FP32_REL_TOL)}
    else:
        figures = {
            "mode": session.spec.port.dtype,
            **judge_decode_steps_ratio(port, hf_lp, hf_fp32, DEFAULT_BAND),
        }
    first = figures["first_divergent"]
    if first is not None:
        prompt = first["prompt"]
        first["tokens_scored"] = _scored_length(session, prompt, scored[prompt])
        first["position"] = first["step"] + first["tokens_scored"] - len(scored[prompt]) - 1
        bucket = _bucket(session, first["tokens_scored"])
        if bucket is not None:
            first["graph"] = f"context_encoding_{bucket}"
    return figures, None if figures["passed"] else _problem(figures)


def _scored_length(session, prompt: int, continuation: list[int]) -> int:
    if session.is_encoder_decoder:
        return 1 + len(continuation)  # the decoder start token, then the continuation
    return len(session.prompt_ids[prompt]) + len(continuation)


def _bucket(session, length: int) -> int | None:
    """The context-encoding bucket the torch target scores ``length`` tokens in (NxDI picks its own)."""
    if session.target_name != "torch":
        return None
    return smallest_fitting(length, sorted(session.spec.port.context_bucket_list))


def _problem(f: dict) -> str:
    first = f["first_divergent"]
    what = (
        "teacher-forced logits (prompt + golden continuation scored in one context-encoding pass) "
        f"{'differ from HF' if f['mode'] == 'fp32' else 'in ' + f['mode']}"
    )
    if first is None:
        where = "no single position is above the band"
    else:
        graph = f" through {first['graph']}" if "graph" in first else ""
        where = (
            f"first divergent position: prompt {first['prompt']} new token {first['step']} at position "
            f"{first['position']} ({first['tokens_scored']} tokens scored{graph})"
        )
    spread = f"max error {f['max_step_error']:.3g}, median {f['median_step_error']:.3g}"
    if f["mode"] == "fp32":
        return (
            f"{what}: {f['divergent_steps']} of {f['steps']} positions above rel_tol={f['rel_tol']:g}; {where}, "
            f"relative error {first['error']:.3g}; {spread}"
        )
    step_r = f", its R={first['r']:.3g}" if first else ""
    return (
        f"{what}: R={f['r']:.3g}x the reference's own {f['mode']} error (band {f['band'][0]:g}-{f['band'][1]:g}); "
        f"{where}{step_r}; {spread} (reference's own median {f['reference_median_step_error']:.3g})"
    )
