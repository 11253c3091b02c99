"""Decode-step parity and dtype-calibrated logit tolerances (issue 13, items 1 and 3): the golden tokens
fed one at a time through the compiled token-generation graphs, every step's logits against HF's."""

from __future__ import annotations

import pytest
import torch

from pytest_autoport.decode_forcing import decode_teacher_forced
from pytest_autoport.errors import StageFailure
from pytest_autoport.numerics_logits import (
    calibrated_logit_check,
    judge_decode_steps_fp32,
    judge_decode_steps_ratio,
)
from pytest_autoport.numerics_tokens import logit_check
from tests.helpers import fake_static_graphs

VOCAB = 7
ATTENTION = "blocks/attention.py"
# token generation writes each new key and value one slot too far: prefill is right, decoding is not
KV_ONE_SLOT_OFF = (
    ATTENTION,
    "        batch, heads, _, head_dim = k.shape\n",
    "        batch, heads, _, head_dim = k.shape\n"
    "        if k.shape[2] == 1:\n"
    "            position_ids = position_ids + 1\n",
)
# token generation rotates queries and keys as if every decode token sat at position 0
ROPE_IGNORES_DECODE_POSITIONS = (
    "llama/modeling_llama.py",
    "        cos, sin = self.rotary(position_ids, q.dtype)\n",
    "        rope_positions = position_ids if position_ids.shape[1] > 1 else position_ids * 0\n"
    "        cos, sin = self.rotary(rope_positions, q.dtype)\n",
)


class RecordingGraphs:
    """Fake compiled graphs: logits one-hot at (input token + position); records each call."""

    def __init__(self):
        self.calls = []

    def graph(self, name):
        def run(input_ids, position_ids):
            self.calls.append((name, input_ids[:, -1].tolist(), position_ids[:, -1].tolist()))
            logits = torch.zeros(*input_ids.shape, VOCAB)
            logits.scatter_(-1, ((input_ids + position_ids) % VOCAB)[..., None], 1.0)
            return logits

        return run


def test_teacher_forced_decoding_feeds_golden_tokens_through_token_generation_buckets():
    fake = RecordingGraphs()
    prompts, golden = [[1, 2, 3], [4]], [[5, 6, 0, 1, 2, 3, 4, 5], [2, 3]]
    out = decode_teacher_forced(prompts, golden, fake_static_graphs(fake.graph, batch_size=2))
    assert [t.shape for t in out.logits] == [(8, VOCAB), (2, VOCAB)]
    assert out.graphs[0] == ["context_encoding_4"] + ["token_generation_8"] * 5 + ["token_generation_16"] * 2
    assert out.positions == [[2, 3, 4, 5, 6, 7, 8, 9], [0, 1]]
    # each step is fed the previous golden token at its own row's position
    assert fake.calls[1] == ("tkg8", [5, 2], [3, 1])
    assert fake.calls[2] == ("tkg8", [6, 3], [4, 2])
    assert out.logits[0][1].argmax() == (5 + 3) % VOCAB
    with pytest.raises(StageFailure, match="exceeds port.max_seq_len"):
        graphs = fake_static_graphs(fake.graph, batch_size=1, context=(16,), token=(16,))
        decode_teacher_forced([[1] * 10], [[1] * 8], graphs)


def test_decode_step_judges_name_the_first_divergent_step():
    torch.manual_seed(0)
    ref = [torch.randn(6, 50), torch.randn(6, 50)]
    port = [r + 1e-7 * torch.randn_like(r) for r in ref]
    assert judge_decode_steps_fp32(port, ref)["passed"]
    port[1][3] += 0.05
    port[0][4] += 0.05
    result = judge_decode_steps_fp32(port, ref)
    assert not result["passed"] and result["divergent_steps"] == 2
    assert result["first_divergent"]["prompt"] == 1 and result["first_divergent"]["step"] == 3

    noise = [1e-2 * torch.randn_like(r) for r in ref]
    ref_lp = [r + n for r, n in zip(ref, noise)]
    port_lp = [r + 1e-2 * torch.randn_like(r) for r in ref]
    ok = judge_decode_steps_ratio(port_lp, ref_lp, ref)
    assert ok["passed"] and 0.8 < ok["r"] < 1.2 and ok["first_divergent"] is None
    port_lp[0][2:] += 0.1  # a decode-path bug from step 2 on
    bad = judge_decode_steps_ratio(port_lp, ref_lp, ref)
    assert not bad["passed"] and bad["r"] > 1.2
    assert (bad["first_divergent"]["prompt"], bad["first_divergent"]["step"]) == (0, 2)


def test_calibrated_logit_check_accepts_reference_level_noise_that_nxdi_tolerances_reject():
    torch.manual_seed(0)
    expected = 5 * torch.randn(20, 2000)
    reference_lp = expected + 0.05 * torch.randn_like(expected)
    actual_lp = expected + 0.05 * torch.randn_like(expected)
    assert not logit_check(expected, actual_lp)["passed"]
    calibrated = calibrated_logit_check(expected, actual_lp, reference_lp)
    assert calibrated["passed"], calibrated["failures"][:3]
    assert set(calibrated["ratio_per_topk"]) == {"top5", "top50", "top1000", "all"}
    shifted = actual_lp.clone()
    top = expected.topk(5, dim=-1).indices
    shifted.scatter_add_(1, top, torch.full(top.shape, 0.5))
    failed = calibrated_logit_check(expected, shifted, reference_lp)
    assert not failed["passed"]
    assert {f["topk"] for f in failed["failures"] if f["kind"] == "ratio"} >= {"top5"}


def _golden(project):
    return project.stage("golden")


def test_kv_cache_one_slot_off_in_token_generation_fails_golden_naming_the_step(port_project):
    port_project.replace(*KV_ONE_SLOT_OFF, what="KV cache written at position + 1 in token generation")
    port_project.run("-k", "golden", "--autoport-dtype=float32")
    golden = _golden(port_project)
    assert golden["status"] == "failed"
    figures = golden["figures"]
    assert figures["teacher_forced_match"] == 1.0  # context encoding is right
    parity = figures["decode_parity"]
    assert not parity["passed"] and parity["median_step_error"] > 1e-3
    first = parity["first_divergent"]
    assert first["step"] >= 1 and first["graph"].startswith("token_generation_")
    assert (
        f"first divergent step: prompt {first['prompt']} step {first['step']} ({first['graph']}, "
        in (golden["message"])
    )
    assert f"position {first['position']})" in golden["message"]
    assert golden["figures"]["likely_cause"]["file"] == "kb/kv_cache_and_decoding.md"  # from the figures
    assert golden["message"].endswith("(kb/kv_cache_and_decoding.md)")


def test_rope_ignoring_decode_positions_fails_logit_mode(port_project):
    port_project.replace(*ROPE_IGNORES_DECODE_POSITIONS, what="RoPE ignores positions in token generation")
    port_project.run("-k", "golden", "--autoport-dtype=float32", "--autoport-golden-mode=logit")
    golden = _golden(port_project)
    assert golden["status"] == "failed"
    figures = golden["figures"]
    assert figures["logit_check_path"] == "token_generation" and figures["logit_check_passed"] is False
    assert "logit check failed (NxD Inference tolerances; token_generation logits)" in golden["message"]
    assert "'graph': 'token_generation_" in golden["message"]  # each failure named by prompt, step, graph
    assert figures["decode_parity"]["first_divergent"]["graph"].startswith("token_generation_")


@pytest.mark.parametrize("name", ["llama", "gemma3", "qwen3_moe"])
def test_correct_port_passes_every_golden_gate_in_bf16(make_project, name):
    project = make_project(name)
    project.run("-k", "golden", "--autoport-dtype=bfloat16", "--autoport-golden-mode=all")
    golden = project.stage("golden")
    assert golden["status"] == "passed", golden.get("message")
    figures = golden["figures"]
    assert figures["decode_parity"]["mode"] == "bfloat16" and figures["decode_parity"]["passed"]
    assert figures["logit_tolerance"] == "calibrated" and figures["logit_check_passed"]
