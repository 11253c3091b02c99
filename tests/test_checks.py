"""The comparison helpers behind the component and model stages."""

from __future__ import annotations

import pytest
import torch

from pytest_autoport.checks import OverPrecisionWarning, check_fp32, check_low_precision
from pytest_autoport.errors import StageFailure


def test_shape_mismatch_is_a_named_failure():
    with pytest.raises(StageFailure, match=r"mlp: the port's output has shape \[2, 3\], HF's has \[3, 2\]"):
        check_fp32(torch.zeros(2, 3), torch.zeros(3, 2), "mlp", None)


def test_failing_comparison_writes_a_plot(tmp_path):
    expected = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(StageFailure) as info:
        check_fp32(expected + 0.1, expected, "norm", tmp_path / "norm.png")
    assert (tmp_path / "norm.png").is_file()
    assert info.value.figures["plot"] == str(tmp_path / "norm.png")


def _port_with_ratio(ratio: float):
    """(port_lp, ref_lp, ref_fp32) where the port's error is ``ratio`` times the reference's own
    bf16 rounding error, in the same direction: R = ratio exactly."""
    generator = torch.Generator().manual_seed(0)
    x, w = torch.randn(16, 32, generator=generator), torch.randn(32, 32, generator=generator)
    ref32 = x @ w
    ref_lp = (x.bfloat16() @ w.bfloat16()).float()
    return ref32 + ratio * (ref_lp - ref32), ref_lp, ref32


@pytest.mark.parametrize("ratio", [0.9, 1.15])
def test_low_precision_pass_reports_the_ratio(ratio):
    figures = check_low_precision(*_port_with_ratio(ratio), "lm_head", None, dtype_name="bfloat16")
    assert figures["r"] == pytest.approx(ratio, rel=1e-4) and figures["mode"] == "bfloat16"
    assert figures["band"] == [0.8, 1.2] and "warning" not in figures


def test_low_precision_fails_above_the_band_naming_r():
    with pytest.raises(StageFailure) as info:
        check_low_precision(*_port_with_ratio(1.5), "lm_head", None, dtype_name="bfloat16")
    assert str(info.value).startswith(
        "lm_head in bfloat16: port error is R=1.5x the reference's own bfloat16 rounding error (band 0.8-1.2)"
    )
    assert info.value.figures["r"] == pytest.approx(1.5, rel=1e-4)


def test_low_precision_band_override_moves_the_limit():
    port = _port_with_ratio(1.5)
    figures = check_low_precision(
        *port, "mlp", None, dtype_name="bfloat16", band=(0.5, 2.0), reason="fused kernel"
    )
    assert figures["r"] == pytest.approx(1.5, rel=1e-4)
    assert figures["band"] == [0.5, 2.0] and figures["band_reason"] == "fused kernel"


def test_low_precision_below_the_band_warns_of_over_precision():
    with pytest.warns(OverPrecisionWarning, match=r"lm_head: port is more precise .*R=0\.5 < 0\.8"):
        figures = check_low_precision(*_port_with_ratio(0.5), "lm_head", None, dtype_name="bfloat16")
    assert figures["r"] == pytest.approx(0.5, rel=1e-4) and "an extra upcast?" in figures["warning"]
