"""Low-precision probes with real-model activation statistics (issue 13, item 4): RMSNorm precision bugs
that hide inside a tiny model's rounding error fail every norm component; correct norms stay silent."""

from __future__ import annotations

import pytest
import torch

from pytest_autoport.numerics import three_tensor_ratio
from pytest_autoport.numerics_probes import PROBES, gain_ratio, probe_input

NORM = "blocks/norms.py"
CORRECT = "        x = x.float()\n        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)\n"
RMSNORM_BUGS = {
    # the variance reduced in the input dtype, the normalisation in FP32
    "variance_in_bf16": (
        NORM,
        CORRECT,
        "        variance = x.pow(2).mean(-1, keepdim=True)\n"
        "        x = x.float()\n"
        "        x = x * torch.rsqrt(variance.float() + self.eps)\n",
    ),
    # no FP32 upcast at all
    "no_fp32_upcast": (
        NORM,
        CORRECT,
        "        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)\n",
    ),
}
LLAMA_NORMS = [
    "input_norm-layer0",
    "input_norm-layer1",
    "post_attention_norm-layer0",
    "post_attention_norm-layer1",
    "norm",
]


def _rmsnorm(x, weight, upcast_variance=True):
    dtype = x.dtype
    variance = x.float().pow(2).mean(-1, keepdim=True) if upcast_variance else x.pow(2).mean(-1, keepdim=True)
    return weight * (x.float() * torch.rsqrt(variance.float() + 1e-5)).to(dtype)


def test_probes_are_seeded_and_have_real_model_statistics():
    shape = (1, 12, 64)
    assert set(PROBES) == {"outlier_channels", "large_residual"}
    assert torch.equal(probe_input("outlier_channels", shape, 3), probe_input("outlier_channels", shape, 3))
    outliers = probe_input("outlier_channels", shape).abs().mean((0, 1))
    assert (outliers > 30).sum() == 2 and (outliers < 3).sum() == 62
    assert probe_input("large_residual", shape).abs().mean() > 100
    with pytest.raises(ValueError, match="unknown probe"):
        probe_input("uniform", shape)


def test_gain_ratio_sees_a_per_token_gain_error_that_the_plain_ratio_misses():
    torch.manual_seed(0)
    x = probe_input("large_residual", (1, 256, 64)).bfloat16()
    weight = 1 + 0.1 * torch.randn(64)
    ref_fp32 = _rmsnorm(x.float(), weight)
    ref_lp = _rmsnorm(x, weight.bfloat16())
    buggy = _rmsnorm(x, weight.bfloat16(), upcast_variance=False)
    assert three_tensor_ratio(buggy, ref_lp, ref_fp32) < 1.2  # hidden in the elementwise rounding
    assert gain_ratio(buggy, ref_lp, ref_fp32) > 1.2
    assert gain_ratio(ref_lp.clone(), ref_lp, ref_fp32) == 1.0
    with pytest.raises(ValueError, match="shape mismatch"):
        gain_ratio(buggy[:, :3], ref_lp, ref_fp32)


@pytest.mark.parametrize("bug", sorted(RMSNORM_BUGS))
def test_rmsnorm_precision_bug_fails_every_norm_component(port_project, bug):
    port_project.replace(*RMSNORM_BUGS[bug], what=bug)
    port_project.run("-k", "norm")
    statuses = port_project.statuses()
    for name in LLAMA_NORMS:
        assert statuses[f"component[{name}]"] == "passed", name  # FP32 cannot see it
        failed = port_project.stage(f"component[{name}-bfloat16]")
        assert failed["status"] == "failed", name
        assert (
            "in bfloat16" in failed["message"]
            and "rounding error" in failed["message"]
            or ("fails the real-model activation probes" in failed["message"])
        )


def test_correct_norms_pass_the_probes_with_figures(llama_verdict):
    probes = llama_verdict.stage("component[input_norm-layer0-bfloat16]")["figures"]["probes"]
    assert set(probes) == set(PROBES)
    for figures in probes.values():
        assert 0.8 <= figures["r"] <= 1.2 and 0.8 <= figures["gain_r"] <= 1.2
