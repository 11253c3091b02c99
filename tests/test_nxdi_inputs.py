"""The inputs the ``nxdi`` target builds for NxDI, checked on a recording fake application (no NxDI,
no stand-in): generation pads each static batch on the right with a mask that covers the prompt
alone, and reads the new tokens after the padded prompt; teacher-forced scoring runs the sequence's
first two tokens through context encoding, then feeds the token at position t at position t with a
mask of length t, and the row returned for position t is that step's logits."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from pytest_autoport.generation import SamplingParams
from pytest_autoport.targets.nxdi import generation as nxdi_generation
from pytest_autoport.targets.nxdi.generation import NxdiCompiledModel

PAD = 9
VOCAB = 4


class RecordingApp:
    """Logits that say where they come from: at each returned position, [position, input token, 0, 0]."""

    def __init__(self):
        self.forwards: list[dict] = []
        self.config = SimpleNamespace(vocab_size=VOCAB)

    def reset(self):
        self.forwards.append({"reset": True})

    def forward(self, *, input_ids, attention_mask, position_ids, seq_ids):
        self.forwards.append(
            {
                "input_ids": input_ids.clone(),
                "attention_mask": attention_mask.clone(),
                "position_ids": position_ids,
            }
        )
        logits = torch.zeros(input_ids.shape[0], 1, VOCAB)
        logits[:, 0, 0] = position_ids[:, -1].float()
        logits[:, 0, 1] = input_ids[:, -1].float()
        return SimpleNamespace(logits=logits)


class RecordingAdapter:
    """Stands in for HuggingFaceGenerationAdapter: records what generate receives, runs one context
    encoding and one token-generation forward, and appends new tokens 100 + 10 * row + step."""

    calls: list[dict] = []

    def __init__(self, app):
        self.app = app
        self.sampler = None

    def generate(self, input_ids, attention_mask, **kwargs):
        RecordingAdapter.calls.append({"input_ids": input_ids, "attention_mask": attention_mask, **kwargs})
        batch, length = input_ids.shape
        self.app.forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=torch.arange(length).expand(batch, length),
            seq_ids=torch.arange(batch),
        )
        new = kwargs["max_new_tokens"]
        for step in range(1, new):
            self.app.forward(
                input_ids=input_ids[:, :1],
                attention_mask=torch.ones(batch, length + step, dtype=torch.long),
                position_ids=torch.full((batch, 1), length + step - 1),
                seq_ids=torch.arange(batch),
            )
        tokens = torch.tensor([[100 + 10 * row + step for step in range(new)] for row in range(batch)])
        return torch.cat((input_ids, tokens), dim=1)


@pytest.fixture
def model(monkeypatch):
    RecordingAdapter.calls = []
    monkeypatch.setattr(
        nxdi_generation, "nxdi", lambda module: SimpleNamespace(HuggingFaceGenerationAdapter=RecordingAdapter)
    )
    port = SimpleNamespace(batch_size=2, max_seq_len=16, context_bucket_list=[8, 16], token_bucket_list=[16])
    return NxdiCompiledModel(RecordingApp(), SimpleNamespace(port=port), pad_id=PAD, path="cpu")


def test_generation_pads_on_the_right_and_reads_after_the_prompt(model):
    result = model.generate([[5, 6, 7], [8], [4, 3]], SamplingParams(max_new_tokens=2))

    first, second = RecordingAdapter.calls
    assert first["input_ids"].tolist() == [[5, 6, 7], [8, PAD, PAD]]
    assert first["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    # the last static batch is filled with copies of its first prompt, never with padding rows
    assert second["input_ids"].tolist() == [[4, 3], [4, 3]]
    assert second["attention_mask"].tolist() == [[1, 1], [1, 1]]
    assert first["pad_token_id"] == PAD
    # new tokens start right after the longest prompt of the batch; filler rows are dropped
    assert result.tokens == [[100, 101], [110, 111], [100, 101]]


def test_score_feeds_position_t_its_own_token_with_a_mask_of_length_t(model):
    seq = [5, 3, 7, 7, 1, 2]

    (logits,) = model.score([seq])

    reset, context, *steps = model.app.forwards
    assert reset == {"reset": True}
    assert context["input_ids"].tolist() == [seq[:2]] * 2
    assert context["position_ids"].tolist() == [[0, 1]] * 2
    assert context["attention_mask"].tolist() == [[1, 1]] * 2
    assert len(steps) == len(seq) - 2
    for t, call in zip(range(2, len(seq)), steps, strict=True):
        assert call["input_ids"].tolist() == [[seq[t]]] * 2
        assert call["position_ids"].tolist() == [[t]] * 2
        assert call["attention_mask"].tolist() == [[1] * t] * 2
    assert logits.shape == (len(seq), VOCAB)
    assert logits[0].isnan().all()  # no eager model to read position 0 from: never a made-up logit
    assert logits[1:, 0].tolist() == list(range(1, len(seq)))  # row t holds position t's logits
    assert logits[1:, 1].tolist() == seq[1:]


def test_decode_teacher_forced_scores_each_new_token_at_the_position_before_it(model):
    prompts, continuations = [[5, 3, 7], [2]], [[7, 1, 30], [4, 9]]

    out = model.decode_teacher_forced(prompts, continuations)

    assert out.positions == [[2, 3, 4], [0, 1]]
    # the logits that predict continuation token j come from the position of the token before it
    assert out.logits[0][:, 0].tolist() == [2, 3, 4]
    assert out.logits[0][:, 1].tolist() == [7, 7, 1]
    assert out.logits[1][0].isnan().all() and out.logits[1][1, :2].tolist() == [1, 4]
    assert out.graphs == [["token_generation_16"] * 3, ["context_encoding_8"] * 2]
