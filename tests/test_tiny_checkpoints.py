"""Tiny checkpoints trained on the bundled corpus (issue 7): deterministic, cached, self-healing."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from pytest_autoport import checkpoint
from pytest_autoport.artifacts import RebuildWarning
from pytest_autoport.checkpoint import CORPUS, resolve_weights
from pytest_autoport.spec import load_spec

REPO = Path(__file__).resolve().parents[1]


def llama_spec(folder: Path, **tiny):
    return bundled_spec("llama", folder, **tiny)


def bundled_spec(name: str, folder: Path, **tiny):
    """Bundled spec ``name`` with its tiny checkpoint in ``folder`` and ``tiny`` overriding its recipe."""
    spec = load_spec(REPO / "port_specs" / f"{name}.toml", REPO, check_imports=False)
    spec = dataclasses.replace(spec, model=dataclasses.replace(spec.model, weights_path=str(folder)))
    return dataclasses.replace(spec, tiny={**spec.tiny, **tiny})


def test_materialisation_is_deterministic(tmp_path):
    first = resolve_weights(llama_spec(tmp_path / "a", train_steps=12))
    second = resolve_weights(llama_spec(tmp_path / "b", train_steps=12))
    a, b = load_file(first.path / "model.safetensors"), load_file(second.path / "model.safetensors")
    assert a and a.keys() == b.keys()
    assert all(a[k].equal(b[k]) for k in a)
    assert first.kind == "tiny-trained"
    assert first.training["steps"] == 12 and first.training["final_loss"] > 0


def test_second_resolve_trains_nothing(tmp_path, monkeypatch):
    spec = llama_spec(tmp_path / "w", train_steps=3)
    resolve_weights(spec)
    monkeypatch.setattr(
        checkpoint, "_materialise_tiny", lambda *a: pytest.fail("rebuilt a cached checkpoint")
    )
    assert resolve_weights(spec).rebuilt_after is None


def test_corrupt_cached_checkpoint_is_detected_and_rebuilt(tmp_path):
    spec = llama_spec(tmp_path / "w", train_steps=3)
    good = (resolve_weights(spec).path / "model.safetensors").read_bytes()
    weights_file = tmp_path / "w" / "model.safetensors"
    weights_file.write_bytes(good[:-64] + bytes(64))
    with pytest.warns(RebuildWarning, match="rebuilt"):
        rebuilt = resolve_weights(spec)
    assert rebuilt.rebuilt_after == "checksum mismatch in model.safetensors"
    assert weights_file.read_bytes() == good


def test_changed_recipe_rebuilds_and_random_path_stays_available(tmp_path):
    path = tmp_path / "w"
    assert resolve_weights(llama_spec(path, train_steps=3)).kind == "tiny-trained"
    random = resolve_weights(llama_spec(path, weights="random"))
    assert random.kind == "tiny-random" and random.training is None
    assert json.loads((path / checkpoint.TINY_MARKER).read_text())["weights"] == "random"


def test_bad_tiny_kind_names_the_field(tmp_path):
    from pytest_autoport.errors import SpecError

    with pytest.raises(SpecError) as info:
        resolve_weights(llama_spec(tmp_path / "w", weights="pretrained"))
    assert info.value.field == "tiny.weights"
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
    ("field", "value"), [("train_steps", 0), ("train_steps", 2.5), ("train_lr", "fast"), ("train_lr", -1e-3)]
)
def test_bad_training_parameters_name_the_field(tmp_path, field, value):
    from pytest_autoport.errors import SpecError

    with pytest.raises(SpecError) as info:
        resolve_weights(llama_spec(tmp_path / "w", **{field: value}))
    assert info.value.field == f"tiny.{field}"
    assert not (tmp_path / "w").exists()


def test_encoder_decoder_tokenizer_closes_inputs_with_eos(tmp_path):
    """The tokenizer saved beside a tiny checkpoint (whatever its weights: untrained ones here, as the
    tokenizer is made before any training)."""
    from transformers import AutoTokenizer

    def saved_tokenizer(name: str):
        spec = bundled_spec(name, tmp_path / name, weights="random")
        return AutoTokenizer.from_pretrained(resolve_weights(spec).path)

    t5, llama = saved_tokenizer("t5"), saved_tokenizer("llama")
    assert t5("The days of the week")["input_ids"][-1] == t5.eos_token_id
    assert llama("The days of the week")["input_ids"][-1] != llama.eos_token_id


def test_continuation_batches_pair_a_passage_with_the_text_after_it():
    import torch

    from pytest_autoport.checkpoint import build_tokenizer, close_inputs_with_eos
    from pytest_autoport.tiny_training import TARGET_TOKENS, _continuation_batches

    tokenizer = build_tokenizer(1024)
    close_inputs_with_eos(tokenizer)
    ids = torch.tensor(tokenizer(CORPUS.read_text(), add_special_tokens=False)["input_ids"])
    batch = next(_continuation_batches(ids, tokenizer, torch.Generator().manual_seed(0), 8))
    text = tokenizer.decode(ids)
    for row, mask, labels in zip(batch["input_ids"], batch["attention_mask"], batch["labels"]):
        source = row[mask.bool()].tolist()
        assert source[-1] == tokenizer.eos_token_id and tokenizer.eos_token_id not in source[:-1]
        assert len(labels) == TARGET_TOKENS
        continuation = tokenizer.decode(labels)
        assert continuation[0].isspace()  # passages end where a word ends
        assert tokenizer.decode(source[:-1]) + continuation in text


def test_trained_model_continues_corpus_text(llama_verdict):
    texts = llama_verdict.stage("generate")["figures"]["texts"]
    corpus = " ".join(CORPUS.read_text().split())
    for text in texts:
        assert text.strip() in corpus


def test_every_step_count_gets_a_schedule_that_runs():
    """A short training run (`train_steps = 10` divided by zero in the one-cycle schedule) trains."""
    import torch

    from pytest_autoport.tiny_training import _schedule

    for steps in range(1, 41):
        optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=1e-3)
        schedule = _schedule(optimizer, 1e-3, steps)
        for _ in range(steps):
            optimizer.step()
            schedule.step()
        assert optimizer.param_groups[0]["lr"] > 0
    assert isinstance(_schedule(optimizer, 1e-3, 300), torch.optim.lr_scheduler.OneCycleLR)
    assert _schedule(optimizer, 1e-3, 300).total_steps == 300
