"""Routing flips are judged on router logits, also where the HF router returns dense top-k scores
(GPT-OSS on transformers 4.x: the softmax of each token's top-k logits scattered into [tokens, experts])."""

from __future__ import annotations

import torch

from pytest_autoport.discrete import routing_flips
from pytest_autoport.hf_reference import capture_modules
from pytest_autoport.router_taps import router_scores


class LogitsRouter(torch.nn.Linear):
    pass


class DenseScoresRouter(torch.nn.Linear):
    """Returns (dense top-2 softmax scores, indices), as GPT-OSS's router does on transformers 4.57."""

    def forward(self, hidden):
        logits = super().forward(hidden.reshape(-1, hidden.shape[-1]))
        top, experts = torch.topk(logits, 2, dim=-1)
        return torch.zeros_like(logits).scatter(-1, experts, torch.softmax(top, dim=-1)), experts


def _routers():
    torch.manual_seed(0)
    logits_router, dense_router = LogitsRouter(8, 4), DenseScoresRouter(8, 4)
    dense_router.load_state_dict(logits_router.state_dict())
    return logits_router, dense_router


def _tapped(router, hidden):
    holder = torch.nn.ModuleDict({"router": router})
    captures = capture_modules(holder, ["router"], lambda: holder["router"](hidden))
    return router_scores(router, captures["router"])


def test_dense_top_k_scores_are_read_back_as_the_routers_logits():
    logits_router, dense_router = _routers()
    hidden = torch.randn(1, 5, 8)
    expected = logits_router(hidden).reshape(5, 4)
    torch.testing.assert_close(_tapped(logits_router, hidden), expected)
    torch.testing.assert_close(_tapped(dense_router, hidden), expected)


def test_a_near_tie_flip_is_measured_on_logits_not_on_dense_scores():
    _, dense_router = _routers()
    hidden = torch.randn(1, 3, 8)
    fp32 = _tapped(dense_router, hidden)
    top = torch.topk(fp32, 3, dim=-1)
    flipped = fp32.clone()  # token 0: the third expert overtakes the second by 1e-3 in the port
    second, third = top.indices[0, 1], top.indices[0, 2]
    flipped[0, third] = fp32[0, second] + 1e-3
    flips = routing_flips("router", fp32, fp32, flipped, k=2, dtype=torch.bfloat16)
    assert [f.token for f in flips] == [0]
    gap = float(fp32[0, second] - fp32[0, third])
    assert abs(flips[0].margin - gap) < 1e-5  # the logit gap, not a softmax weight


def test_a_module_without_linear_weights_keeps_its_output():
    scores = torch.tensor([[0.7, 0.3, 0.0, 0.0], [0.0, 0.0, 0.4, 0.6]])
    holder = torch.nn.ModuleDict({"router": torch.nn.Identity()})
    captures = capture_modules(holder, ["router"], lambda: holder["router"](scores))
    torch.testing.assert_close(router_scores(holder["router"], captures["router"]), scores)
