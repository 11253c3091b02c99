"""The golden stage's divergence records on hand-made logits: each carries the golden's top-1 minus
top-2 margin at that position, whether the port's token is in the golden's top 5, and a line that
labels it a near-tie (margin below 0.01) or a real divergence."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from pytest_autoport.numerics_tokens import teacher_forced_match
from pytest_autoport.stages.golden import _divergences, _free_running_divergences

SESSION = SimpleNamespace(tokenizer=SimpleNamespace(decode=lambda ids: f"<{ids[0]}>"))


def logits(*rows: dict[int, float], vocab: int = 8) -> torch.Tensor:
    """One row per position: the given token -> logit values, every other token at -10."""
    out = torch.full((len(rows), vocab), -10.0)
    for i, row in enumerate(rows):
        for token, value in row.items():
            out[i, token] = value
    return out


def test_free_running_divergence_reports_the_golden_margin_there():
    golden_logits = [
        logits({1: 5.0}, {2: 3.0, 0: 2.5, 5: 1.0}, {3: 4.0}),  # prompt 0 diverges at 1: margin 0.5
        logits({4: 1.0, 6: 0.996}),  # prompt 1 diverges at 0: a near-tie
        logits({7: 2.0}),  # prompt 2 matches
    ]
    golden, ported = [[1, 2, 3], [4], [7]], [[1, 0, 3], [6], [7]]

    out = _free_running_divergences(SESSION, golden, ported, golden_logits, [1, 0, None])

    first, second = out
    assert {k: v for k, v in first.items() if k != "text"} == {
        "prompt": 0,
        "position": 1,
        "golden_token": 2,
        "port_token": 0,
        "golden_margin": 0.5,
        "port_token_in_golden_top5": True,
    }
    assert first["text"] == (
        "prompt 0: free-running output diverges at new token 1: golden 2 '<2>' vs port 0 '<0>'; "
        "golden margin 0.5 (real divergence)"
    )
    assert second["golden_margin"] == pytest.approx(0.004, abs=1e-6)
    assert second["text"].endswith("golden margin 0.004 (near-tie)")


def test_teacher_forced_divergences_carry_margin_and_top5():
    golden_logits = logits({1: 5.0, 2: 1.0}, {2: 3.0, 3: 2.995}, {3: 4.0, 0: 1.0, 1: 0.5, 2: 0.4, 4: 0.3})
    port_logits = logits({1: 5.0}, {3: 3.0}, {6: 9.0})
    forced = [teacher_forced_match(golden_logits, port_logits)]

    out = _divergences(SESSION, [golden_logits], forced)

    assert [(d["position"], d["golden_token"], d["port_token"]) for d in out] == [(1, 2, 3), (2, 3, 6)]
    assert out[0]["golden_margin"] == pytest.approx(0.005, abs=1e-6)
    assert out[1]["golden_margin"] == pytest.approx(3.0)
    assert [d["port_token_in_golden_top5"] for d in out] == [True, False]
    assert out[0]["text"] == (
        "prompt 0 new token 1: golden 2 '<2>' vs port 3 '<3>'; golden margin 0.005 (near-tie); "
        "port token in golden top-5: True"
    )
    assert "golden margin 3 (real divergence)" in out[1]["text"]
