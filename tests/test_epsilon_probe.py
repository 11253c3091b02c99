"""The FP32 epsilon probe of norm components: a norm whose epsilon differs from the config's by a factor
of ten passes the check on ordinary activations (relative error ~4e-5 under the 1e-4 tolerance) and fails
the probe, which scales the input to a mean square equal to the HF module's epsilon."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pytest_autoport.stages.component_epsilon import hf_epsilon

Q_NORM_EPS = (
    "qwen3/modeling_qwen3.py",
    "        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)\n",
    "        self.q_norm = RMSNorm(self.head_dim, 1e-5)\n",
)


def test_the_epsilon_is_read_from_hf_norm_modules():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    assert hf_epsilon(LlamaRMSNorm(8, eps=3e-6)) == 3e-6
    assert hf_epsilon(nn.LayerNorm(8, eps=1e-5)) == 1e-5
    assert hf_epsilon(nn.Linear(8, 8)) is None


@pytest.mark.parametrize("eps", [1e-6, 1e-5])
def test_an_epsilon_ten_times_off_is_invisible_on_ordinary_activations_and_plain_on_the_probe(eps):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    torch.manual_seed(0)
    x = torch.randn(1, 40, 16)
    hf, port = LlamaRMSNorm(16, eps=eps), LlamaRMSNorm(16, eps=eps * 10 if eps < 1e-5 else eps / 10)

    def rel(a, b):
        return float((a - b).norm() / b.norm())

    assert rel(port(x), hf(x)) < 1e-4
    scaled = x * (eps / float(x.pow(2).mean())) ** 0.5
    assert rel(port(scaled), hf(scaled)) > 0.1


def test_a_norm_epsilon_ten_times_off_fails_its_component_only(make_project):
    project = make_project("qwen3")
    project.replace(*Q_NORM_EPS, what="q_norm built with eps 1e-5 (the config says 1e-6)")
    project.run("-k", "q_norm or k_norm", "--autoport-dtype=float32")
    project.assert_failing_exactly(["component[q_norm-layer0]", "component[q_norm-layer1]"])
    stage = project.stage("component[q_norm-layer0]")
    assert (
        "on an input of mean square 1e-06 (the HF module's epsilon) differs from HF in FP32"
        in stage["message"]
    )
    assert "the port's norm adds a different epsilon" in stage["message"]
    assert stage["figures"]["epsilon_probe"]["epsilon"] == 1e-6
    assert stage["figures"]["rel_fro"] > 0.1
    passed = project.stage("component[k_norm-layer0]")
    assert passed["status"] == "passed" and passed["figures"]["epsilon_probe"]["rel_fro"] < 1e-6


def test_last_failed_reruns_exactly_the_failed_stage_items(make_project):
    """``--lf`` after a failing run selects the failed ``component[...]`` items (ids with brackets)."""
    import forked_pytest

    project = make_project("qwen3")
    project.replace(*Q_NORM_EPS, what="q_norm built with eps 1e-5 (the config says 1e-6)")
    args = ("--autoport-model=qwen3", "--autoport-dtype=float32")
    forked_pytest.runpytest(project.pytester, *args, "-k", "q_norm or k_norm or embedding")
    result = forked_pytest.runpytest(project.pytester, *args, "--lf")
    result.stdout.fnmatch_lines(["run-last-failure: rerun previous 2 failures*"])
    data = project.results()
    assert data["partial"] and data["selection"]["selected"] == 2 and data["selection"]["last_failed"]
    assert sorted(s["id"] for s in data["stages"]) == ["component[q_norm-layer0]", "component[q_norm-layer1]"]
