"""Tests of pytest_autoport.numerics on hand-computed tensors and a realistic bf16 linear layer."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from pytest_autoport.numerics import (
    Comparison,
    Verdict,
    compare,
    judge_ratio,
    judge_strict,
    three_tensor_ratio,
)
from pytest_autoport.numerics_tokens import (
    DEFAULT_LOGIT_TOL_MAP,
    TokenMatch,
    logit_check,
    teacher_forced_match,
    token_match,
)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# --------------------------------------------------------------------------- compare


def test_compare_hand_computed():
    expected = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    actual = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    cmp = compare(actual, expected)
    # diff = [0, 0, 0, 1]; ||e|| = 5; ||d|| = 1; a.e = 25; ||a|| = sqrt(26)
    assert cmp.max_abs == 1.0
    assert cmp.mean_abs == 0.25
    assert cmp.rel_fro == pytest.approx(0.2)
    assert cmp.nmse == pytest.approx(0.04)
    assert cmp.sqnr_db == pytest.approx(10 * math.log10(25.0))
    assert cmp.cosine == pytest.approx(25.0 / (5.0 * math.sqrt(26.0)))
    assert cmp.worst_index == (1, 1)
    assert cmp.worst_actual == 1.0
    assert cmp.worst_expected == 0.0
    assert cmp.nonfinite is None
    assert cmp.shape == (2, 2)
    assert all(isinstance(i, int) for i in cmp.worst_index)


def test_compare_negative_and_3d_worst_index():
    expected = torch.zeros(2, 3, 4)
    expected[1, 2, 3] = 2.0
    actual = expected.clone()
    actual[0, 1, 2] = -0.5
    actual[1, 2, 3] = 2.25
    cmp = compare(actual, expected)
    assert cmp.worst_index == (0, 1, 2)
    assert cmp.worst_actual == -0.5
    assert cmp.max_abs == 0.5
    assert cmp.mean_abs == pytest.approx(0.75 / 24)
    assert cmp.rel_fro == pytest.approx(math.sqrt(0.25 + 0.0625) / 2.0)


def test_compare_identical():
    x = torch.randn(4, 5, 6)
    cmp = compare(x, x.clone())
    assert cmp.max_abs == 0.0
    assert cmp.mean_abs == 0.0
    assert cmp.rel_fro == 0.0
    assert cmp.nmse == 0.0
    assert cmp.sqnr_db == math.inf
    assert cmp.cosine == pytest.approx(1.0)
    assert cmp.nonfinite is None
    assert judge_strict(cmp, 1e-6).level == "pass"


def test_compare_all_zero():
    cmp = compare(torch.zeros(3), torch.zeros(3))
    assert cmp.rel_fro == 0.0 and cmp.cosine == 1.0 and cmp.sqnr_db == math.inf


def test_compare_computes_in_float64():
    # In fp32 1 + 1e-8 == 1; the bf16/fp32 inputs are upcast, but the difference is computed in float64.
    a = torch.tensor([1.0], dtype=torch.float64) + 1e-12
    e = torch.tensor([1.0], dtype=torch.float64)
    cmp = compare(a, e)
    assert cmp.max_abs == pytest.approx(1e-12, rel=1e-3)
    # bf16 inputs are accepted
    cmp = compare(torch.ones(3, dtype=torch.bfloat16), torch.ones(3))
    assert cmp.max_abs == 0.0


def test_compare_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError) as info:
        compare(torch.zeros(2, 3), torch.zeros(3, 2))
    assert "(2, 3)" in str(info.value) and "(3, 2)" in str(info.value)


def test_compare_nan_inf_reported_not_hidden():
    expected = torch.ones(2, 3, 8)
    actual = expected.clone()
    actual[0, 2, 5] = float("nan")
    actual[1, 0, 0] = float("nan")
    actual[1, 1, 1] = float("nan")
    actual[1, 2, 7] = float("inf")
    actual[0, 0, 0] = 1.5  # a finite error too
    cmp = compare(actual, expected)
    assert cmp.nonfinite == "actual has 3 NaN and 1 Inf values (first at index (0, 2, 5))"
    # figures over the finite elements only
    assert cmp.max_abs == 0.5
    assert cmp.worst_index == (0, 0, 0)
    assert cmp.mean_abs == pytest.approx(0.5 / 44)
    verdict = judge_strict(cmp, rel_tol=1.0)  # even a huge tolerance never lets NaN/Inf pass
    assert not verdict.ok and verdict.level == "fail"
    assert "NaN" in verdict.reason and "Inf" in verdict.reason
    assert "(0, 2, 5)" in verdict.reason


def test_compare_nonfinite_in_expected_and_all_nan():
    e = torch.tensor([1.0, float("-inf")])
    cmp = compare(torch.tensor([1.0, 2.0]), e)
    assert cmp.nonfinite == "expected has 0 NaN and 1 Inf values (first at index (1,))"
    all_nan = compare(torch.full((2, 2), float("nan")), torch.ones(2, 2))
    assert "4 NaN" in all_nan.nonfinite
    assert math.isnan(all_nan.max_abs) and math.isnan(all_nan.rel_fro)
    assert not judge_strict(all_nan, 1e-3).ok


def test_to_dict_is_json_safe():
    x = torch.randn(3, 3)
    d = compare(x, x).to_dict()
    text = json.dumps(d, allow_nan=False)
    back = json.loads(text)
    assert back["sqnr_db"] == "inf"
    assert back["shape"] == [3, 3]
    bad = x.clone()
    bad[:] = float("nan")
    d = compare(bad, x).to_dict()
    json.dumps(d, allow_nan=False)
    assert d["max_abs"] == "nan"
    assert d["nonfinite"].startswith("actual has 9 NaN")


def test_describe_one_line():
    cmp = Comparison(
        max_abs=1.2e-6,
        mean_abs=3e-7,
        rel_fro=1e-6,
        cosine=0.9999991,
        sqnr_db=120.34,
        nmse=1e-12,
        worst_index=(0, 3, 17),
        worst_actual=0.1234,
        worst_expected=0.1235,
        nonfinite=None,
        shape=(1, 4, 32),
    )
    text = cmp.describe()
    assert "\n" not in text
    assert text.startswith("max_abs=1.2e-06 mean_abs=3e-07 rel_fro=1e-06 cosine=0.999999 sqnr=120.3dB")
    assert text.endswith("worst at (0, 3, 17): 0.1234 vs 0.1235")
    x = torch.ones(3)
    y = x.clone()
    y[1] = float("nan")
    assert "NONFINITE: actual has 1 NaN" in compare(y, x).describe()


# --------------------------------------------------------------------------- judges


def test_judge_strict_pass_and_fail():
    e = torch.ones(10, dtype=torch.float64)
    a = e.clone()
    a[7] = 1.001
    cmp = compare(a, e)
    assert cmp.rel_fro == pytest.approx(0.001 / math.sqrt(10))
    ok = judge_strict(cmp, rel_tol=1e-3)
    assert ok == Verdict(True, "pass", ok.reason)
    bad = judge_strict(cmp, rel_tol=1e-4)
    assert not bad.ok and bad.level == "fail"
    assert "(7,)" in bad.reason and "0.000316" in bad.reason and "rel_tol=0.0001" in bad.reason


def test_three_tensor_ratio_hand_computed():
    ref_fp32 = torch.tensor([1.0, 2.0, 3.0])
    ref_lp = torch.tensor([1.0, 2.0, 3.5])  # ||.|| = 0.5
    port_lp = torch.tensor([1.3, 2.0, 3.4])  # ||.|| = 0.5
    assert three_tensor_ratio(port_lp, ref_lp, ref_fp32) == pytest.approx(1.0)
    port_lp = torch.tensor([1.0, 2.0, 4.0])  # ||.|| = 1
    assert three_tensor_ratio(port_lp, ref_lp, ref_fp32) == pytest.approx(2.0)


def test_three_tensor_ratio_zero_denominator():
    x = torch.tensor([1.0, 2.0])
    assert three_tensor_ratio(x, x, x) == 1.0
    assert three_tensor_ratio(x + 1, x, x) == math.inf
    with pytest.raises(ValueError):
        three_tensor_ratio(torch.zeros(2), torch.zeros(3), torch.zeros(2))


def test_three_tensor_ratio_nan_propagates():
    x = torch.tensor([1.0, 2.0])
    port = torch.tensor([float("nan"), 2.0])
    r = three_tensor_ratio(port, x + 0.1, x)
    assert math.isnan(r)
    assert judge_ratio(r).level == "fail"


def test_judge_ratio_band():
    p = judge_ratio(1.05)
    assert p.ok and p.level == "pass"
    f = judge_ratio(1.83)
    assert not f.ok and f.level == "fail"
    assert "port error is R=1.83x the reference's own bf16 rounding error (band 0.8-1.2)" in f.reason
    w = judge_ratio(0.41)
    assert w.ok and w.level == "warn"
    assert (
        "port is more precise than the reference in this dtype (R=0.41 < 0.8): an extra upcast?" in w.reason
    )
    # custom band
    assert judge_ratio(1.3, band=(0.5, 1.5)).level == "pass"
    assert judge_ratio(0.45, band=(0.5, 1.5)).level == "warn"
    assert judge_ratio(1.2).level == "pass" and judge_ratio(0.8).level == "pass"
    assert judge_ratio(math.inf).level == "fail"
    assert judge_ratio(float("nan")).level == "fail"
    assert "fp16" in judge_ratio(2.0, dtype_name="fp16").reason


def test_judge_ratio_nonfinite_cmp_fails_even_in_band():
    e = torch.ones(4)
    a = e.clone()
    a[2] = float("inf")
    cmp = compare(a, e)
    v = judge_ratio(1.0, cmp=cmp)
    assert not v.ok and v.level == "fail" and "Inf" in v.reason
    ok_cmp = compare(e, e)
    assert "max_abs=" in judge_ratio(1.0, cmp=ok_cmp).reason


# --------------------------------------------------------------------------- realistic bf16


def _linear_setup(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 512, generator=g)
    w = torch.randn(256, 512, generator=g) / 512**0.5
    b = torch.randn(256, generator=g) * 0.1
    ref_fp32 = F.linear(x, w, b)
    ref_lp = F.linear(x.bfloat16(), w.bfloat16(), b.bfloat16())
    return g, x, w, b, ref_fp32, ref_lp


def test_bf16_correct_port_has_ratio_near_one():
    g, x, w, b, ref_fp32, ref_lp = _linear_setup()
    xb, wb, bb = x.bfloat16(), w.bfloat16(), b.bfloat16()
    # (1) same math, different reduction order: permuted K, fp32 accumulation, one rounding at the end
    perm = torch.randperm(512, generator=g)
    port_perm = (xb.float()[:, perm] @ wb.float()[:, perm].T + bb.float()).bfloat16()
    # (2) a 2-way row-parallel (tensor parallel) split: bf16 partial outputs, all-reduced in fp32
    parts = [F.linear(xc, wc) for xc, wc in zip(xb.chunk(2, dim=1), wb.chunk(2, dim=1), strict=True)]
    port_tp = (torch.stack(parts).float().sum(0) + bb.float()).bfloat16()
    for port in (port_perm, port_tp):
        r = three_tensor_ratio(port, ref_lp, ref_fp32)
        assert 0.8 < r < 1.2, r
        v = judge_ratio(r, cmp=compare(port, ref_fp32))
        assert v.ok and v.level == "pass", v.reason
    # the port is not bit-identical to the reference: the ratio is doing real work
    assert not torch.equal(port_tp, ref_lp)


def test_bf16_buggy_port_fails_ratio():
    g, x, w, b, ref_fp32, ref_lp = _linear_setup()
    w_bad = w * (1 + 0.01 * torch.randn(w.shape, generator=g))  # 1% weight perturbation
    port = F.linear(x.bfloat16(), w_bad.bfloat16(), b.bfloat16())
    r = three_tensor_ratio(port, ref_lp, ref_fp32)
    assert r > 1.2
    v = judge_ratio(r)
    assert not v.ok and v.level == "fail"
    # the same bug is far above bf16 noise, but a plain rel_fro check at bf16 tolerance would miss it
    assert compare(port, ref_fp32).rel_fro < 0.02


def test_bf16_upcasting_port_warns():
    _, x, w, b, ref_fp32, ref_lp = _linear_setup()
    port = F.linear(x, w, b).bfloat16()  # computes in fp32, rounds only the output
    r = three_tensor_ratio(port, ref_lp, ref_fp32)
    assert r < 0.8
    v = judge_ratio(r)
    assert v.ok and v.level == "warn" and "upcast" in v.reason


# --------------------------------------------------------------------------- tokens


def test_token_match():
    expected = [[1, 2, 3, 4], [5, 6, 7, 8], [9, 9]]
    actual = [[1, 2, 3, 4], [5, 6, 0, 8], [9]]
    tm = token_match(expected, actual)
    assert isinstance(tm, TokenMatch)
    assert tm.per_prompt == [1.0, 0.75, 0.5]
    assert tm.first_divergence == [None, 2, 1]
    assert tm.matched == 4 + 3 + 1
    assert tm.total == 10
    assert tm.rate == pytest.approx(0.8)
    # extra actual tokens are ignored; an empty expected prompt is vacuously matched
    tm = token_match([[1, 2], []], [[1, 2, 3], [4]])
    assert tm.per_prompt == [1.0, 1.0] and tm.rate == 1.0 and tm.first_divergence == [None, None]
    with pytest.raises(ValueError):
        token_match([[1]], [[1], [2]])
    json.dumps(tm.to_dict())


def _logits(rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_teacher_forced_match():
    golden = _logits(
        [
            [5.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0],  # argmax 0
            [0.0, 3.0, 2.99, 0.0, 0.0, 0.0, -1.0],  # argmax 1, near tie with 2
            [0.0, 0.0, 0.0, 4.0, 1.0, 0.0, -5.0],  # argmax 3, token 6 is last
        ]
    )
    port = _logits(
        [
            [5.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0],
            [0.0, 2.99, 3.0, 0.0, 0.0, 0.0, -1.0],  # flips the near tie -> 2
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 9.0],  # real error -> 6
        ]
    )
    out = teacher_forced_match(golden, port, tokens=[11, 12, 13])
    assert out["rate"] == pytest.approx(1 / 3)
    assert out["matched"] == 1 and out["total"] == 3
    d1, d2 = out["divergences"]
    assert d1["position"] == 1 and d1["golden_token"] == 1 and d1["port_token"] == 2
    assert d1["golden_margin"] == pytest.approx(0.01, abs=1e-6)
    assert d1["port_token_in_golden_top5"] is True
    assert d1["input_token"] == 12
    assert d2["position"] == 2 and d2["golden_token"] == 3 and d2["port_token"] == 6
    assert d2["golden_margin"] == pytest.approx(3.0)
    assert d2["port_token_in_golden_top5"] is False
    json.dumps(out)
    # batch dimension of 1 accepted
    assert teacher_forced_match(golden[None], golden[None], None)["rate"] == 1.0
    with pytest.raises(ValueError):
        teacher_forced_match(golden, port[:2], None)


def test_logit_check_pass_and_tolerances():
    torch.manual_seed(1)
    expected = torch.randn(4, 2000) * 3
    assert DEFAULT_LOGIT_TOL_MAP[5] == (1e-5, 0.01)
    out = logit_check(expected, expected.clone())
    assert out["passed"] and out["failures"] == []
    assert set(out["max_error_per_topk"]) == {"top5", "top50", "top1000", "all"}
    assert all(v == 0.0 for v in out["max_error_per_topk"].values())

    # 1.5% relative error on the top-1 logit of position 2: violates the top-5 tolerance (1%) only
    actual = expected.clone()
    top = int(expected[2].argmax())
    actual[2, top] = expected[2, top] * 1.015
    out = logit_check(expected, actual)
    assert not out["passed"]
    kinds = {(f["kind"], f.get("topk")) for f in out["failures"]}
    assert kinds == {("tolerance", "top5")}
    (fail,) = out["failures"]
    assert fail["position"] == 2 and fail["token"] == top
    err = abs(float(expected[2, top]) * 0.015)
    for key in ("top5", "top50", "top1000", "all"):
        assert out["max_error_per_topk"][key] == pytest.approx(err, rel=1e-5)

    # 4% error on a tail logit (rank ~1500): only the "all" slice sees it, and 4% < 5% passes
    actual = expected.clone()
    tail = int(expected[0].argsort(descending=True)[1500])
    actual[0, tail] = expected[0, tail] * 1.04
    out = logit_check(expected, actual)
    assert out["passed"], out["failures"]
    assert out["max_error_per_topk"]["top1000"] == 0.0
    assert out["max_error_per_topk"]["all"] > 0.0
    actual[0, tail] = expected[0, tail] * 1.06
    out = logit_check(expected, actual)
    assert [(f["kind"], f["topk"], f["token"]) for f in out["failures"]] == [("tolerance", "all", tail)]


def test_logit_check_divergence():
    expected = _logits([[2.0, 1.0, 0.5, 0.25], [1.0, 0.9995, 0.0, -1.0]])
    # position 1: argmax flips within 5e-4 -> allowed by divergence_difference_tol (1e-3) and the tolerances
    actual = _logits([[2.0, 1.0, 0.5, 0.25], [0.9998, 0.9999, 0.0, -1.0]])
    tol = {None: (1e-5, 0.05)}
    out = logit_check(expected, actual, tol_map=tol)
    assert out["passed"], out["failures"]
    # a real flip: argmax moves by far more than divergence_difference_tol
    actual = _logits([[2.0, 1.0, 0.5, 0.25], [0.99, 1.04, 0.0, -1.0]])
    out = logit_check(expected, actual, tol_map=tol)
    assert not out["passed"]
    div = [f for f in out["failures"] if f["kind"] == "divergence"]
    assert len(div) == 1
    assert div[0]["position"] == 1 and div[0]["expected_token"] == 0 and div[0]["actual_token"] == 1
    assert div[0]["difference"] == pytest.approx(0.05, abs=1e-6)
    # batch dimension flattened to positions
    out = logit_check(expected[None], actual[None], tol_map=tol)
    assert not out["passed"]


def test_logit_check_nonfinite_and_shape():
    expected = _logits([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    actual = expected.clone()
    actual[1, 0] = float("nan")
    out = logit_check(expected, actual)
    assert not out["passed"]
    assert out["failures"][0] == {
        "position": 1,
        "kind": "nonfinite",
        "actual_nonfinite": 1,
        "expected_nonfinite": 0,
    }
    assert out["max_error_per_topk"] and all(math.isnan(v) for v in out["max_error_per_topk"].values())
    with pytest.raises(ValueError):
        logit_check(expected, expected[:1])
