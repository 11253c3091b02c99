"""The golden stage's check of the token-generation path: decode-step parity and the logit check.

The golden tokens are fed one at a time through the compiled token-generation graphs and every step's
logits are compared with HF's logits at the same positions (one teacher-forced HF forward, cached with the
golden): FP32 strict
in FP32, the three-tensor ratio against HF run in the same low precision otherwise. The logit check
(``--autoport-golden-mode=logit``) judges the same token-generation logits, as NxD Inference's own
check does, with NxDI's fixed tolerances or with tolerances calibrated to the dtype.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..checks import DEFAULT_BAND
from ..numerics_logits import (
    DECODE_FP32_REL_TOL,
    calibrated_logit_check,
    judge_decode_steps_fp32,
    judge_decode_steps_ratio,
)
from ..numerics_tokens import logit_check
from .golden_reference import streamed_windows, streaming


@dataclass
class DecodeRun:
    port: list[torch.Tensor]  # per prompt [steps, vocab]: the compiled port, golden tokens fed
    hf_fp32: list[torch.Tensor]  # HF FP32 at the same positions
    hf_lp: list[torch.Tensor] | None  # HF in the port's low precision; None for an FP32 port
    graphs: list[list[str]]
    positions: list[list[int]]


def low_precision(session) -> bool:
    return session.spec.port.dtype != "float32"


def run_decode(session, golden: list[list[int]], hf_fp32: list[torch.Tensor], hf_lp) -> DecodeRun | None:
    compiled = session.compiled_model
    if not hasattr(compiled, "decode_teacher_forced"):
        return None
    forced = compiled.decode_teacher_forced(session.prompt_ids, golden)
    return DecodeRun(forced.logits, hf_fp32, hf_lp, forced.graphs, forced.positions)


def hf_low_precision(session, golden: list[list[int]]) -> list[torch.Tensor] | None:
    """HF's logits in the port's low precision predicting each ``golden`` token (None for an FP32 port)."""
    if not low_precision(session):
        return None
    if streaming(session):
        return streamed_windows(session, golden, session.lp_dtype)
    return session.golden_reference.logits_lp


def decode_parity(session, golden: list[list[int]], hf_fp32: list[torch.Tensor], hf_lp):
    """(figures, problem text or None, the DecodeRun or None when the target cannot feed tokens);
    ``hf_lp``: HF's logits in the port's low precision (``hf_low_precision``), None for FP32."""
    start = time.perf_counter()
    run = run_decode(session, golden, hf_fp32, hf_lp)
    if run is None:
        return {"skipped": f"target {session.target_name!r} cannot feed tokens one at a time"}, None, None
    if run.hf_lp is None:
        figures = {"mode": "fp32", **judge_decode_steps_fp32(run.port, run.hf_fp32, DECODE_FP32_REL_TOL)}
    else:
        figures = {
            "mode": session.spec.port.dtype,
            **judge_decode_steps_ratio(run.port, run.hf_lp, run.hf_fp32, DEFAULT_BAND),
        }
    figures["token_generation_steps"] = sum(
        g.startswith("token_generation") for row in run.graphs for g in row
    )
    first = figures["first_divergent"]
    if first is not None:
        first["graph"] = run.graphs[first["prompt"]][first["step"]]
        first["position"] = run.positions[first["prompt"]][first["step"]]
    figures["seconds"] = round(time.perf_counter() - start, 3)
    return figures, None if figures["passed"] else _problem(figures), run


def _problem(f: dict) -> str:
    first = f["first_divergent"]
    where = (
        f"first divergent step: prompt {first['prompt']} step {first['step']} ({first['graph']}, "
        f"position {first['position']})"
        if first
        else "no single step is above the band"
    )
    spread = f"max step error {f['max_step_error']:.3g}, median {f['median_step_error']:.3g}"
    if f["mode"] == "fp32":
        return (
            f"decode-step logits differ from HF (golden tokens fed one at a time through the token-generation "
            f"graphs): {f['divergent_steps']} of {f['steps']} steps above rel_tol={f['rel_tol']:g}; {where}, "
            f"relative error {first['error']:.3g}; {spread}"
        )
    step_r = f", its R={first['r']:.3g}" if first else ""
    return (
        f"decode-step logits in {f['mode']} (golden tokens fed one at a time through the token-generation "
        f"graphs): R={f['r']:.3g}x the reference's own {f['mode']} error (band {f['band'][0]:g}-{f['band'][1]:g}); "
        f"{where}{step_r}; {spread} (reference's own median {f['reference_median_step_error']:.3g})"
    )


def logit_figures(session, run: DecodeRun | None, fallback: tuple[list, list]) -> tuple[dict, str | None]:
    """The logit check on the token-generation logits (``fallback`` (golden, port) logits from context
    encoding where the target cannot feed tokens). Calibrated in low precision unless
    ``--autoport-logit-tolerance=nxdi``."""
    tolerance = getattr(session.options, "logit_tolerance", "calibrated")
    expected, actual = (run.hf_fp32, run.port) if run is not None else fallback
    path = "token_generation" if run is not None else "context_encoding"
    if tolerance == "calibrated" and run is not None and run.hf_lp is not None:
        result = calibrated_logit_check(
            torch.cat(run.hf_fp32), torch.cat(run.port), torch.cat(run.hf_lp), band_high=DEFAULT_BAND[1]
        )
        figures = {"logit_ratio_per_topk": result["ratio_per_topk"]}
        label = (
            f"tolerances calibrated to {session.spec.port.dtype}: R per top-k slice <= {DEFAULT_BAND[1]:g}"
        )
    else:
        result = logit_check(torch.cat(expected), torch.cat(actual))
        figures = {}
        label = "NxD Inference tolerances"
    figures.update(
        logit_tolerance=tolerance if run is not None and run.hf_lp is not None else "nxdi",
        logit_check_path=path,
        logit_check_passed=result["passed"],
        logit_max_error=result["max_error_per_topk"],
    )
    if result["passed"]:
        return figures, None
    failures = [_locate(f, run, [len(t) for t in expected]) for f in result["failures"][:5]]
    return figures, f"logit check failed ({label}; {path} logits): " + "; ".join(map(str, failures))


def _locate(failure: dict, run: DecodeRun | None, lengths: list[int]) -> dict:
    """A failure's row of the concatenated logits as prompt, step (and graph, position)."""
    if "position" not in failure:
        return failure
    row = failure.pop("position")
    prompt = 0
    while prompt < len(lengths) - 1 and row >= lengths[prompt]:
        row -= lengths[prompt]
        prompt += 1
    where = {"prompt": prompt, "step": row}
    if run is not None:
        where.update(graph=run.graphs[prompt][row], position=run.positions[prompt][row])
    return {**where, **failure}
