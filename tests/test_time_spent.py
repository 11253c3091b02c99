"""Time spent building the tiny checkpoint or loading the reference: announced, and credited to a
stage item (issue 15, item 4)."""

from __future__ import annotations

import re

import pytest
from test_tiny_checkpoints import llama_spec

from pytest_autoport.checkpoint import resolve_weights
from pytest_autoport.time_spent import TimeSpent


def test_steps_are_credited_to_the_running_item_or_once_to_the_collection_item():
    said = []
    spent = TimeSpent()
    spent.announce = said.append
    with spent.step("building the tiny llama checkpoint", "training 3 steps"):
        pass  # at collection
    spent.item_running = True
    with spent.step("loading the FP32 HF reference", announce=False):
        pass
    first = spent.take(credit_collection=False)
    assert set(first) == {"spent_s"} and set(first["spent_s"]) == {"loading the FP32 HF reference"}
    credited = spent.take(credit_collection=True)
    assert set(credited["spent_s"]) == {"building the tiny llama checkpoint"}
    assert credited["spent_before_s"] == credited["spent_s"]["building the tiny llama checkpoint"] >= 0
    assert spent.take(credit_collection=True) == {}  # credited once
    assert said[0] == "autoport: building the tiny llama checkpoint (training 3 steps) ..."
    assert said[1].startswith("autoport: building the tiny llama checkpoint: ") and said[1].endswith(" s")
    assert len(said) == 2  # the unannounced load says nothing


def test_a_tiny_build_is_timed_and_a_cached_one_is_not(tmp_path):
    steps = []

    def spend(what, note):
        steps.append((what, note))
        return TimeSpent().step(what, note)

    spec = llama_spec(tmp_path / "w", weights="random")
    resolve_weights(spec, spend)
    resolve_weights(spec, spend)
    assert steps == [("building the tiny llama checkpoint", "random weights, cached for later runs")]


@pytest.mark.parametrize("selection", ["weights or mlp-layer0", "mlp-layer0"])
def test_the_build_is_announced_and_counted_in_the_weights_stage(make_project, selection):
    project = make_project("llama")
    text = re.sub(
        r'weights_path = ".*"', f'weights_path = "{project.root / "fresh"}"', project.spec.read_text()
    )
    project.spec.write_text(re.sub(r"train_steps = \d+", "train_steps = 4", text))
    result = project.run("-k", selection)
    assert result.ret == 0
    out = result.stdout.str()
    assert "autoport: building the tiny llama checkpoint (training 4 steps on one thread" in out
    stages = {s["id"]: s for s in project.results()["stages"]}
    credited = stages["weights"] if "weights" in stages else stages["component[mlp-layer0]"]
    built = credited["figures"]["spent_before_s"]
    assert credited["figures"]["spent_s"]["building the tiny llama checkpoint"] == built
    assert credited["duration_s"] >= built > 0
    others = [s for s in stages.values() if s is not credited]
    assert all("spent_before_s" not in s["figures"] for s in others)
    if "weights" in stages:
        assert "tiny-trained weights (built in" in out
