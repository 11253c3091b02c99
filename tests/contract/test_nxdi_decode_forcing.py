"""CONTRACT test of the ``nxdi`` compiled model's teacher-forced decoding (the golden stage's decode-step
parity) against the stand-in NxDI: positions 0 and 1 come from the two-token context encoding that
``score`` starts with, every later step runs token generation."""

from __future__ import annotations

import torch
from causal_reference import toy_logits

from pytest_autoport.targets.nxdi import nxdi_bucket


def test_decode_teacher_forced_feeds_the_continuation_through_token_generation(
    stand_in, compiled, causal_contract
):
    spec, port, model = compiled
    prompts, golden = [[5, 3, 7], [2]], [[7, 1, 30], [4, 9]]

    stand_in.CALLS.clear()
    out = model.decode_teacher_forced(prompts, golden)

    causal_contract([[2], [2]])
    reference = toy_logits(port, torch.tensor([prompts[0] + golden[0]]))[0]
    torch.testing.assert_close(out.logits[0], reference[2:5])

    scored = model.score([p + g for p, g in zip(prompts, golden)])
    torch.testing.assert_close(out.logits[0], scored[0][2:5])
    torch.testing.assert_close(out.logits[1], scored[1][0:2])
    assert out.positions == [[2, 3, 4], [0, 1]]
    bucket = spec.port.token_bucket_list[0]
    assert out.graphs == [
        [f"token_generation_{bucket}"] * 3,
        [f"context_encoding_{nxdi_bucket(2, spec.port.context_bucket_list)}"] * 2,
    ]
