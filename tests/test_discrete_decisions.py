"""Discrete decisions in low precision: a router top-k flip between near-tied experts is left out of R and
reported with its margin; a flip at a clear margin fails, naming the token, the expert sets and the margin.

The end-to-end cases plant, in a copy of the GPT-OSS port, what another CPU's bf16 kernels can do: the
port's low-precision router swaps one token's k-th and (k+1)-th experts. At the token with the smallest
gap that is a near-tie; at the token with the widest gap it is a real routing error."""

from __future__ import annotations

import pytest
import torch

from pytest_autoport.discrete import flip_margin, keep_tokens, near_tie_bound, routing_flips

FILE = "gpt_oss/modeling_gpt_oss.py"
MLP_CLASS = "class NeuronGptOssMLP(nn.Module):\n"
ROUTER_LINE = "self.router = nn.Linear(config.hidden_size, config.num_local_experts, bias=True)"
SWAPPING_ROUTER = """class SwappingRouter(nn.Linear):
    # planted: in low precision, the token whose 2nd and 3rd experts are closest (or farthest) in exact
    # arithmetic has them swapped
    def forward(self, x):
        logits = super().forward(x)
        if logits.dtype == torch.float32:
            return logits
        exact = nn.functional.linear(x.float(), self.weight.float(), self.bias.float())
        ordered = exact.sort(dim=-1, descending=True)
        gaps = ordered.values[:, 1] - ordered.values[:, 2]
        token = int(gaps.{pick}())
        second, third = ordered.indices[token, 1], ordered.indices[token, 2]
        logits = logits.clone()
        logits[token, second], logits[token, third] = logits[token, third].clone(), logits[token, second].clone()
        return logits


"""


def plant_swap(project, pick):
    project.replace(FILE, MLP_CLASS, SWAPPING_ROUTER.format(pick=pick) + MLP_CLASS, what="swapping router")
    project.replace(FILE, ROUTER_LINE, ROUTER_LINE.replace("nn.Linear", "SwappingRouter"), what="router")


STAGE = "component[decoder_layer-layer0-bfloat16]"


def _scores(rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_a_near_tie_flip_is_reported_and_a_clear_one_is_not_a_near_tie():
    fp32 = _scores([[3.0, 1.0, 0.999, -2.0], [3.0, 2.0, 0.0, -1.0]])
    reference_lp = fp32 + 0.02  # the reference's own rounding: delta 0.02, bound 0.08
    port = fp32.clone()
    port[0, 2] = 1.01  # token 0: experts 1 and 2 swap across an FP32 gap of 0.001
    port[1, 0] = -5.0  # token 1: expert 0 (score 3.0) dropped for expert 2 (0.0)
    flips = routing_flips("router", fp32, reference_lp, port, k=2, dtype=torch.bfloat16)
    assert [(f.token, f.near_tie) for f in flips] == [(0, True), (1, False)]
    assert flips[0].fp32 == (0, 1) and flips[0].port == (0, 2)
    assert flips[0].margin == pytest.approx(0.001, abs=1e-6)
    assert flips[1].margin == pytest.approx(3.0)
    assert flips[0].bound == pytest.approx(0.08, rel=1e-3)
    assert "token 1" in flips[1].describe() and "clear margin" in flips[1].describe()


def test_the_bound_is_at_least_one_ulp_of_the_dtype():
    fp32 = _scores([[8.0, 1.0]])
    # identical runs (delta 0): the bound is 4 ulps of bf16 at 8, i.e. 4 * 2**-7 * 8
    assert near_tie_bound(fp32, fp32, torch.bfloat16) == pytest.approx(4 * 2**-7 * 8)


def test_the_margin_is_the_widest_gap_the_flip_crossed():
    row = torch.tensor([4.0, 3.0, 2.9, 0.5], dtype=torch.float64)
    assert flip_margin(row, (0, 1), (0, 2)) == pytest.approx(0.1)
    assert flip_margin(row, (0, 1), (2, 3)) == pytest.approx(3.5)
    assert flip_margin(row, (0, 1), (0, 1)) == 0.0


def test_flipped_tokens_leave_the_ratio():
    out = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)
    (kept,) = keep_tokens([out], {1, 4})
    assert kept.tolist() == [[0.0, 1.0], [4.0, 5.0], [6.0, 7.0], [10.0, 11.0]]


@pytest.fixture
def project(make_project):
    return make_project("gpt_oss")


def test_near_tie_flip_is_left_out_of_r_and_reported(project):
    plant_swap(project, "argmin")
    result = project.run("-k", "decoder_layer-layer0-bfloat16 or (model and bfloat16)")
    result.assert_outcomes(passed=2)
    model = project.stage("model[bfloat16]")["figures"]  # the full model: every layer's router swaps
    assert model["routing_near_ties_excluded"] and model["routing_flips"]
    assert all(f["near_tie"] for f in model["routing_flips"])
    figures = project.stage(STAGE)["figures"]
    (flip,) = figures["routing_flips"]
    assert flip["near_tie"] and flip["margin"] <= flip["bound"]
    assert flip["port"] != flip["fp32"] == flip["reference_lp"]
    assert figures["routing_near_ties_excluded"] == [flip["token"]]
    assert figures["r"] <= 1.2 < figures["r_all_tokens"]  # the flip alone would have failed R
    assert "near-tie routing flip(s) left out of R" in figures["routing_note"]


def test_flip_at_a_clear_margin_fails_naming_token_and_margin(project):
    plant_swap(project, "argmax")
    result = project.run("-k", "decoder_layer-layer0-bfloat16")
    result.assert_outcomes(failed=1)
    stage = project.stage(STAGE)
    (flip,) = stage["figures"]["routing_flips"]
    assert not flip["near_tie"] and flip["margin"] > flip["bound"]
    assert "routes 1 token(s) to other experts than HF" in stage["message"]
    assert f"token {flip['token']}: experts HF fp32 {flip['fp32']}" in stage["message"]
    assert "clear margin" in stage["message"]


def _golden_case(gap):
    """Two prompts of 4 golden tokens; prompt 0's port output takes token 1 instead of token 0 at
    position 1, ``gap`` below it in the golden, and free-runs elsewhere from there."""
    from pytest_autoport.numerics_tokens import teacher_forced_match, token_match

    golden = [[0, 0, 0, 0], [2, 2, 2, 2]]
    ported = [[0, 1, 3, 3], [2, 2, 2, 2]]
    logits = torch.zeros(2, 4, 5)
    logits[0, :, 0], logits[0, 1, 1] = 5.0, 5.0 - gap
    logits[1, :, 2] = 5.0
    port_logits = logits.clone()
    port_logits[0, 1, 1] = 5.0 + gap  # teacher-forced, the port also prefers token 1 at position 1
    forced = [teacher_forced_match(g, p) for g, p in zip(logits, port_logits)]
    return token_match(golden, ported), forced, list(logits), ported


def test_a_golden_divergence_at_a_near_tie_counts_as_tied():
    from pytest_autoport.discrete import margin_aware_token_match

    free, forced, logits, ported = _golden_case(gap=0.005)
    assert free.rate == pytest.approx(5 / 8)
    gate = margin_aware_token_match(free, forced, logits, ported, "float32")
    assert gate["token_match_margin_aware"] == 1.0
    assert gate["near_tie_divergences"] == [
        {"prompt": 0, "position": 1, "golden_gap": 0.005, "bound": 0.01, "why": "near-tie"}
    ]
    assert "free-running divergences at near-ties count as tied" in gate["near_tie_note"]
    assert "prompt 0 at token 1 (gap 0.005 <= 0.01)" in gate["near_tie_note"]


def test_a_golden_divergence_at_a_clear_margin_still_counts():
    from pytest_autoport.discrete import golden_near_tie_bound, margin_aware_token_match

    free, forced, logits, ported = _golden_case(gap=0.5)
    gate = margin_aware_token_match(free, forced, logits, ported, "float32")
    assert gate["token_match_margin_aware"] == pytest.approx(5 / 8) and gate["near_tie_note"] == ""
    # bf16 logits near 5 round to 2**-7 * 4: a 0.1 gap is within 4 ulps there, 0.5 is not
    assert golden_near_tie_bound(5.0, "bfloat16") == pytest.approx(4 * 2**-7 * 4)
    assert margin_aware_token_match(free, forced, logits, ported, "bfloat16")["token_match_margin_aware"] < 1


def test_a_golden_divergence_hf_makes_itself_in_low_precision_counts_as_tied():
    """A bf16 port that picks, at a clear FP32 margin, the token HF run in bf16 also ranks first there:
    the reference's own rounding makes that choice, so the prompt is judged teacher-forced."""
    from pytest_autoport.discrete import margin_aware_token_match

    free, forced, logits, ported = _golden_case(gap=0.5)
    hf_bf16 = [row.clone() for row in logits]
    assert margin_aware_token_match(free, forced, logits, ported, "bfloat16", hf_bf16)[
        "token_match_margin_aware"
    ] == pytest.approx(5 / 8)  # HF in bf16 keeps the golden token: the port's choice is its own
    hf_bf16[0][1, 1] = 5.0  # HF in bf16 ties the two tokens there
    gate = margin_aware_token_match(free, forced, logits, ported, "bfloat16", hf_bf16)
    assert gate["token_match_margin_aware"] == 1.0
    assert gate["near_tie_divergences"] == [
        {"prompt": 0, "position": 1, "golden_gap": 0.5, "bound": 0.125, "why": "HF in bfloat16 picks it too"}
    ]
    assert "prompt 0 at token 1 (HF in bfloat16 picks it too)" in gate["near_tie_note"]
