"""The contract tests have teeth: each plausible input-building bug in the ``nxdi`` harness, planted as a
monkeypatch of its own builders (``right_padded``, ``token_generation_inputs``), is caught by the
stand-in's values (a causal LM's logits depend on positions and mask), by the recorded ``app.forward``
arguments, or both. A mutant only the recorded arguments can catch says so."""

from __future__ import annotations

import pytest
import torch
from causal_reference import causal_lm_violations, greedy_reference, toy_logits

from pytest_autoport.generation import SamplingParams
from pytest_autoport.targets.nxdi import generation as nxdi_generation

RIGHT_PADDED = nxdi_generation.right_padded
TOKEN_GENERATION_INPUTS = nxdi_generation.token_generation_inputs
SEQ = [5, 3, 7, 7, 1, 30, 2]
PROMPTS = [[1, 2, 3], [4, 5]]


def _step(ids, t, *, position, width, seq_ids=None):
    batch = ids.shape[0]
    return {
        "input_ids": ids[:, t : t + 1],
        "attention_mask": torch.ones(batch, width, dtype=torch.long),
        "position_ids": torch.full((batch, 1), position),
        "seq_ids": torch.arange(batch) if seq_ids is None else seq_ids,
    }


def _left_padded(rows, length, pad_id):
    ids, mask = RIGHT_PADDED(rows, length, pad_id)
    for i, row in enumerate(rows):
        ids[i], mask[i] = ids[i].roll(length - len(row)), mask[i].roll(length - len(row))
    return ids, mask


def _mask_over_padding(rows, length, pad_id):
    ids, mask = RIGHT_PADDED(rows, length, pad_id)
    return ids, torch.ones_like(mask)


# name -> (builder replaced, mutant, a fragment of the violation it must cause, values it changes)
SCORE_MUTANTS = {
    "t_plus_5_one_wide_mask": (lambda ids, t: _step(ids, t, position=t + 5, width=1), "at position 7, but 2"),
    "skips_a_slot": (lambda ids, t: _step(ids, t, position=t + 1, width=t + 1), "at position 3, but 2"),
    "position_behind": (lambda ids, t: _step(ids, t, position=t - 1, width=t), "at position 1, but 2"),
    "mask_over_own_slot": (lambda ids, t: _step(ids, t, position=t, width=t + 1), "is not ones over the 2"),
    "seq_ids_reversed": (
        lambda ids, t: _step(ids, t, position=t, width=t, seq_ids=torch.arange(ids.shape[0]).flip(0)),
        "seq_ids [1, 0], not 0..1",
    ),
}
# the stand-in cannot see these in its values: every row holds the same sequence
VALUE_BLIND = {"seq_ids_reversed"}
GENERATE_MUTANTS = {
    "left_padding": (_left_padded, "row 1 mask [0, 1, 1] is not right padding"),
    "mask_over_padding": (_mask_over_padding, "covers [3, 3] tokens per row, not the rows' [3, 2]"),
}


@pytest.fixture
def model2(compile_toy):
    """(eager port, loaded compiled model) of the toy port with a static batch of 2."""
    return compile_toy(2)[1:]


def _score_findings(stand_in, port, model):
    (logits,) = model.score([SEQ])
    matches = torch.allclose(logits, toy_logits(port, torch.tensor([SEQ]))[0], atol=1e-5)
    return matches, causal_lm_violations(stand_in.find("app.forward"), [[2, 2]])


def _generate_findings(stand_in, port, model):
    tokens = model.generate(PROMPTS, SamplingParams(max_new_tokens=4)).tokens
    matches = tokens == [greedy_reference(port, p, 4) for p in PROMPTS]
    return matches, causal_lm_violations(stand_in.find("app.forward"), [[3, 2]])


def test_the_unmutated_harness_matches_a_causal_lm_and_keeps_its_contract(stand_in, model2):
    port, model = model2
    assert _score_findings(stand_in, port, model) == (True, [])
    stand_in.CALLS.clear()
    assert _generate_findings(stand_in, port, model) == (True, [])


@pytest.mark.parametrize("name", sorted(SCORE_MUTANTS))
def test_a_scoring_mutant_is_caught(stand_in, model2, monkeypatch, name):
    mutant, violation = SCORE_MUTANTS[name]
    monkeypatch.setattr(nxdi_generation, "token_generation_inputs", mutant)

    matches, problems = _score_findings(stand_in, *model2)

    assert matches is (name in VALUE_BLIND), "a causal LM fed these inputs gives other logits"
    assert any(violation in p for p in problems), problems


@pytest.mark.parametrize("name", sorted(GENERATE_MUTANTS))
def test_a_prompt_batching_mutant_is_caught(stand_in, model2, monkeypatch, name):
    mutant, violation = GENERATE_MUTANTS[name]
    monkeypatch.setattr(nxdi_generation, "right_padded", mutant)

    matches, problems = _generate_findings(stand_in, *model2)

    assert not matches, "a causal LM fed these inputs generates other tokens"
    assert any(violation in p for p in problems), problems
