"""The comparison helpers behind the component and model stages."""

from __future__ import annotations

import pytest
import torch

from pytest_autoport.checks import check_fp32, check_low_precision
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


def test_low_precision_pass_reports_ratio():
    torch.manual_seed(0)
    x, w = torch.randn(16, 32), torch.randn(32, 32)
    ref32 = x @ w
    lp = (x.bfloat16() @ w.bfloat16()).float()
    figures = check_low_precision(lp, lp, ref32, "lm_head", None, dtype_name="bfloat16")
    assert figures["r"] == pytest.approx(1.0) and figures["mode"] == "bfloat16"
