"""Thread defaults (issue 15 item 4): one torch thread for a small model, torch's default for a large one,
an environment setting kept, ``--autoport-threads`` deciding over both."""

from __future__ import annotations

import pytest

from pytest_autoport.threads import SMALL_MODEL_PARAMETERS, apply_threads, choose_threads


@pytest.mark.parametrize(
    "requested, parameters, environ, expected, why",
    [
        (None, 200_000, {}, 1, "small model (200,000 parameters)"),
        (None, SMALL_MODEL_PARAMETERS + 1, {}, None, "torch's default"),
        (None, 200_000, {"OMP_NUM_THREADS": "3"}, None, "OMP_NUM_THREADS=3"),
        (4, 200_000, {"OMP_NUM_THREADS": "1"}, 4, "--autoport-threads=4"),
        (0, 200_000, {}, None, "--autoport-threads=0"),
    ],
)
def test_choose_threads(requested, parameters, environ, expected, why):
    threads, reason = choose_threads(requested, parameters, environ)
    assert threads == expected and why in reason


def test_apply_threads_sets_torch_and_reports():
    import torch

    before = torch.get_num_threads()
    try:
        assert apply_threads(2, 10) == {"threads": 2, "threads_reason": "--autoport-threads=2"}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
