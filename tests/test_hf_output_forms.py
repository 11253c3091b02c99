"""``components[].hf_output_forms``: GPT-OSS's HF router returns its logits on transformers 5.x and dense
top-k softmax scores on 4.x; the port's router (the logits projection) is judged against either, and a
router bug fails on both."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_autoport.errors import SpecError
from pytest_autoport.output_forms import align, topk_count
from pytest_autoport.spec import Component, load_spec

torch = pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[1]
ROUTER = Component("router", "model.layers.{i}.mlp.router", hf_output_forms=["topk_softmax_scores"])
EXPERTS, HIDDEN, TOKENS, K = 4, 8, 12, 2


def _dense_scores(logits, k=K):
    """Each row's softmax over its top-k logits at those experts, zero elsewhere (transformers 4.x)."""
    top, index = torch.topk(logits, k, dim=-1)
    return torch.zeros_like(logits).scatter(-1, index, torch.softmax(top, dim=-1))


@pytest.fixture
def router():
    torch.manual_seed(0)
    linear = torch.nn.Linear(HIDDEN, EXPERTS)
    hidden = torch.randn(1, TOKENS, HIDDEN)
    return linear, hidden


def test_signature_tells_dense_scores_from_logits(router):
    linear, hidden = router
    logits = linear(hidden).detach().reshape(TOKENS, EXPERTS)
    assert topk_count(_dense_scores(logits)) == K
    assert topk_count(_dense_scores(logits).bfloat16()) == K
    assert topk_count(logits) is None
    assert topk_count(torch.softmax(logits, dim=-1)) is None  # every expert non-zero: not a top-k form
    assert topk_count(torch.zeros(TOKENS, EXPERTS)) is None


def test_port_logits_are_compared_in_the_form_hf_returns(router):
    linear, hidden = router
    with torch.no_grad():
        port = linear(hidden)  # [1, tokens, experts], as the port's router gives it
        logits = port.reshape(TOKENS, EXPERTS)
    converted, form = align(ROUTER, port, _dense_scores(logits))
    assert form == "topk_softmax_scores"
    torch.testing.assert_close(converted, _dense_scores(logits), rtol=0, atol=0)
    # transformers 5.x returns the logits: compared as they are
    assert align(ROUTER, port, logits) == (port, "")
    # a component without the field is never converted
    assert align(Component("router", "r"), port, _dense_scores(logits)) == (port, "")
    # a port that already returns the dense scores is compared as it is
    assert align(ROUTER, _dense_scores(logits), _dense_scores(logits))[1] == ""


@pytest.mark.parametrize(
    "bug",
    [
        lambda x, w, b: torch.nn.functional.linear(x, w),  # bias dropped
        lambda x, w, b: torch.nn.functional.linear(x, w, -b),  # bias negated
        lambda x, w, b: torch.nn.functional.linear(x, w.flip(0), b.flip(0)),  # experts in reverse order
        lambda x, w, b: torch.softmax(torch.nn.functional.linear(x, w, b), dim=-1),  # softmax before top-k
    ],
    ids=["bias_dropped", "bias_negated", "experts_reversed", "softmax_before_topk"],
)
def test_router_bugs_still_differ_in_the_dense_form(router, bug):
    linear, hidden = router
    with torch.no_grad():
        linear.bias.mul_(4)  # a bias large enough to decide some tokens' experts
        hf = _dense_scores(linear(hidden).reshape(TOKENS, EXPERTS))
        buggy = bug(hidden, linear.weight, linear.bias)
    converted, form = align(ROUTER, buggy, hf)
    assert form == "topk_softmax_scores"
    assert (converted - hf).norm() / hf.norm() > 0.05


def test_installed_transformers_router_matches_a_correct_port():
    """The installed transformers' own GPT-OSS router (logits on 5.x, dense scores on 4.x) against the
    port's nn.Linear with its weights."""
    from transformers import GptOssConfig
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssTopKRouter

    config = GptOssConfig(hidden_size=HIDDEN, num_local_experts=EXPERTS, num_experts_per_tok=K)
    torch.manual_seed(1)
    hf_router = GptOssTopKRouter(config)
    port = torch.nn.Linear(HIDDEN, EXPERTS)
    with torch.no_grad():
        hf_router.weight.copy_(torch.randn(EXPERTS, HIDDEN))
        hf_router.bias.copy_(torch.randn(EXPERTS))
        port.weight.copy_(hf_router.weight)
        port.bias.copy_(hf_router.bias)
        tokens = torch.randn(TOKENS, HIDDEN)
        hf_out = hf_router(tokens)[0]
        converted, _ = align(ROUTER, port(tokens), hf_out)
        torch.testing.assert_close(converted, hf_out)
        buggy, _ = align(ROUTER, torch.nn.functional.linear(tokens, port.weight), hf_out)
    assert not torch.allclose(buggy, hf_out, atol=1e-3)


def test_unknown_form_is_named(tmp_path):
    text = (REPO / "port_specs" / "gpt_oss.toml").read_text()
    old = 'hf_output_forms = ["topk_softmax_scores"]'
    assert old in text
    spec = tmp_path / "port_specs" / "gpt_oss.toml"
    spec.parent.mkdir()
    spec.write_text(text.replace(old, 'hf_output_forms = ["probabilities"]'))
    (tmp_path / "neuron_port").symlink_to(REPO / "neuron_port")
    with pytest.raises(SpecError) as info:
        load_spec(spec, tmp_path)
    assert info.value.field == "components[4].hf_output_forms"
    assert "'probabilities' is not one of" in info.value.problem


def test_planted_router_bug_fails_the_router_check(make_project):
    """The port's router drops its bias (the other router bugs above are judged the same way)."""
    project = make_project("gpt_oss")
    file = "gpt_oss/modeling_gpt_oss.py"
    project.replace(
        file,
        "class NeuronGptOssMLP(nn.Module):",
        "class BuggyRouter(nn.Linear):\n    def forward(self, x):\n        return nn.functional.linear(x, self.weight)\n\n\n"
        "class NeuronGptOssMLP(nn.Module):",
    )
    project.replace(file, "self.router = nn.Linear(", "self.router = BuggyRouter(")
    project.run("-k", "router-layer0 and not bfloat16")
    stage = project.stage("component[router-layer0]")
    assert stage["status"] == "failed"
    # on transformers 4.x the message adds "(as HF's topk_softmax_scores)" after the name
    assert stage["message"].startswith("router (layer 0)")
    assert "differs from HF in FP32" in stage["message"].splitlines()[0]
