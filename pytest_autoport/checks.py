"""Judging one output against the reference, in the two modes, with figures and a diagnostic plot.

FP32 strict: port FP32 vs HF FP32, tight relative tolerance.
Low precision: R = ||port_lp - ref_fp32|| / ||ref_lp - ref_fp32|| inside a band (DESIGN.md section 4).
"""

from __future__ import annotations

import warnings
from pathlib import Path

from .errors import StageFailure
from .numerics import compare, judge_ratio, judge_strict, three_tensor_ratio
from .position_profile import position_profile

FP32_REL_TOL = 1e-4
DEFAULT_BAND = (0.8, 1.2)


class OverPrecisionWarning(UserWarning):
    """The port computes in more precision than the reference does in this dtype."""


def _same_shape(actual, expected, where: str) -> None:
    if tuple(actual.shape) != tuple(expected.shape):
        raise StageFailure(
            f"{where}: the port's output has shape {list(actual.shape)}, HF's has {list(expected.shape)}"
        )


def check_fp32(actual, expected, where: str, plot: Path | None) -> dict:
    _same_shape(actual, expected, where)
    cmp = compare(actual, expected)
    figures = {"mode": "fp32", **cmp.to_dict()}
    verdict = judge_strict(cmp, FP32_REL_TOL)
    if not verdict.ok:
        _fail(f"{where} differs from HF in FP32: {verdict.reason}", figures, plot, actual, expected, None)
    return figures


def check_low_precision(
    port_lp, ref_lp, ref_fp32, where: str, plot: Path | None, *, dtype_name: str, band=DEFAULT_BAND, reason=""
) -> dict:
    _same_shape(port_lp, ref_fp32, where)
    ratio = three_tensor_ratio(port_lp, ref_lp, ref_fp32)
    cmp = compare(port_lp, ref_fp32)
    ref_cmp = compare(ref_lp, ref_fp32)
    figures = {
        "mode": dtype_name,
        "r": ratio if ratio == ratio and ratio != float("inf") else str(ratio),
        "band": list(band),
        **cmp.to_dict(),
        "reference_rel_fro": ref_cmp.rel_fro,
    }
    if reason:
        figures["band_reason"] = reason
    verdict = judge_ratio(ratio, tuple(band), cmp, dtype_name=dtype_name)
    if not verdict.ok:
        _fail(f"{where} in {dtype_name}: {verdict.reason}", figures, plot, port_lp, ref_fp32, ref_lp)
    if verdict.level == "warn":
        figures["warning"] = verdict.reason
        warnings.warn(OverPrecisionWarning(f"{where}: {verdict.reason}"), stacklevel=2)
    return figures


def _fail(message, figures, plot, actual, expected, reference_lp):
    figures.update(position_profile(actual, expected, reference_lp))
    if plot is not None:
        from .plots import save_error_plots

        path = save_error_plots(plot, actual, expected, reference_lp=reference_lp, title=plot.stem)
        figures["plot"] = str(path)
        message += f"\nerror plot: {path}"
    raise StageFailure(message, figures)
