"""Tests of pytest_autoport.plots."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from pytest_autoport.plots import save_error_plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path) -> bool:
    data = path.read_bytes()
    # signature, then the IHDR chunk first and IEND last
    return data[:8] == PNG_MAGIC and data[12:16] == b"IHDR" and data[-8:-4] == b"IEND"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_error_plot_with_reference(tmp_path):
    expected = torch.randn(32, 64)
    ref_lp = expected.bfloat16()
    actual = (expected * 1.001).bfloat16()
    target = tmp_path / "deep" / "nested" / "errors.png"
    out = save_error_plots(target, actual, expected, reference_lp=ref_lp, title="layer 0 mlp")
    assert out == target
    assert _is_png(target)
    assert [p.name for p in target.parent.iterdir()] == ["errors.png"]  # no temp file left behind


def test_error_plot_without_reference_and_overwrite(tmp_path):
    expected = torch.randn(100)
    target = tmp_path / "e.png"
    save_error_plots(target, expected + 1e-3 * torch.randn(100), expected)
    first = target.read_bytes()
    assert _is_png(target)
    save_error_plots(str(target), expected, expected)  # all-zero errors; str path accepted; overwrites
    assert _is_png(target)
    assert target.read_bytes() != first


def test_error_plot_nonfinite_and_shape(tmp_path):
    expected = torch.randn(10)
    actual = expected.clone()
    actual[3] = float("nan")
    target = tmp_path / "nan.png"
    save_error_plots(target, actual, expected, reference_lp=expected)
    assert _is_png(target)
    all_nan = torch.full((4,), float("nan"))
    save_error_plots(tmp_path / "allnan.png", all_nan, torch.zeros(4), reference_lp=all_nan)
    assert _is_png(tmp_path / "allnan.png")
    with pytest.raises(ValueError):
        save_error_plots(tmp_path / "bad.png", torch.zeros(3), torch.zeros(4))
    assert not (tmp_path / "bad.png").exists()


def test_import_is_lazy():
    code = "import sys, pytest_autoport.plots; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
