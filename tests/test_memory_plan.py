"""The per-stage memory plan (issue 17, item 2): each session object is released after the last selected
item that needs it (an FP32 model needed only for its low-precision copy is cast into it), and a step
that will not fit in memory refuses with its figures before it starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pytest_autoport.memory_check import (
    AVAILABLE_ENV,
    MemoryTooSmall,
    check_checkpoint_read_fits,
    check_copy_fits,
    module_bytes,
)
from pytest_autoport.memory_plan import RELEASABLE, MemoryPlan, cast_copy

REPO = Path(__file__).resolve().parents[1]

# -- the plan on a stand-in session --------------------------------------------------------------------


class _Session:
    """What the plan reads of a session: its cached objects (``__dict__``) and the dtypes."""

    def __init__(self, spec_dtype="float32", lp="bfloat16"):
        self.spec = type("Spec", (), {"port": type("Port", (), {"dtype": spec_dtype})()})()
        self.lp_dtype_name = lp
        self.lp_dtype = getattr(torch, lp) if lp else None
        self.target = object()

    def __getattr__(self, name):  # a step not held: built on access
        if name not in RELEASABLE:
            raise AttributeError(name)
        return self.build(name)

    def build(self, name):
        """Stand-in for a shared step: a small model for the models, a marker object otherwise."""
        model = name in ("hf_model", "port")
        self.__dict__[name] = torch.nn.Linear(4, 4) if model else object()
        return self.__dict__[name]


def _items(lp="bfloat16", components=("embedding", "mlp-layer0")):
    items = [("env", "env", {}), ("weights", "weights", {})]
    for dtype in (None, lp) if lp else (None,):
        items += [
            (f"component[{c}{'-' + dtype if dtype else ''}]", "component", {"dtype": dtype})
            for c in components
        ]
    items.append(("model", "model", {"dtype": None}))
    if lp:
        items.append((f"model[{lp}]", "model", {"dtype": lp}))
    return items + [("compile", "compile", {}), ("generate", "generate", {}), ("golden", "golden", {})]


def _run(plan, session, uses):
    """Each item in turn: build what it uses (as the stages would), then the plan's release; returns
    what is held after each item."""
    held = {}
    for stage_id in plan.ids:
        plan.before(stage_id)
        for name in uses.get(stage_id, ()):
            if name not in session.__dict__:
                session.build(name)
        plan.after(stage_id)
        held[stage_id] = sorted(n for n in RELEASABLE if n in session.__dict__)
    return held


FP32_USES = {
    "weights": ("hf_state_dict", "mapping", "port"),
    "component[embedding]": ("hf_model", "hf_trace"),
    "component[embedding-bfloat16]": ("port_lp",),
    "model[bfloat16]": ("hf_model_lp", "hf_trace_lp"),
}


def test_objects_are_released_after_their_last_item_and_fp32_models_become_their_copies():
    session = _Session()
    plan = MemoryPlan(session, _items())
    held = _run(plan, session, FP32_USES)
    assert held["weights"] == ["port"]  # the checkpoint tensors and the mapping go once the port holds them
    assert "hf_model" in held["component[embedding-bfloat16]"]
    # after its last FP32 use, the HF model is cast into the low-precision copy model[bfloat16] needs
    assert "hf_model" not in held["model"] and "hf_model_lp" in held["model"]
    assert ("component[mlp-layer0-bfloat16]", "hf_model->hf_model_lp") in plan.released
    assert held["model[bfloat16]"] == ["port"]  # the FP32 port is compiled
    assert held["compile"] == held["generate"] == held["golden"] == []


def test_bf16_run_keeps_the_low_precision_port_for_compile():
    session = _Session(spec_dtype="bfloat16")
    plan = MemoryPlan(session, _items())
    held = _run(plan, session, FP32_USES)
    assert held["model"] == ["hf_model_lp", "hf_trace", "port_lp"]  # FP32 port released after its last use
    assert held["model[bfloat16]"] == ["port_lp"] and held["compile"] == []


def test_a_selection_releases_nothing_a_later_selected_item_needs():
    session = _Session()
    items = [i for i in _items() if i[0] in ("component[embedding]", "model[bfloat16]", "compile")]
    plan = MemoryPlan(session, items)
    uses = {"component[embedding]": ("port", "hf_model", "hf_trace"), "model[bfloat16]": ("port_lp",)}
    held = _run(plan, session, uses)
    # the port was built before the HF model (before()), and is kept for compile; the HF model is
    # cast into its low-precision copy, needed by model[bfloat16]
    assert held["component[embedding]"] == ["hf_model_lp", "hf_trace", "port"]
    assert held["model[bfloat16]"] == ["port"]


def test_an_unknown_stage_keeps_everything_before_it():
    session = _Session()
    items = [("weights", "weights", {}), ("sharding[tp=2]", "sharding", {}), ("golden", "golden", {})]
    held = _run(MemoryPlan(session, items), session, {"weights": ("hf_state_dict", "mapping", "port")})
    assert held["weights"] == ["hf_state_dict", "mapping", "port"]
    assert held["golden"] == []


def test_cast_copy_matches_deepcopy_and_cast():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8), torch.nn.Embedding(5, 8))
    model.register_buffer("table", torch.randn(3))
    model.register_buffer("index", torch.arange(3))
    model[0].weight = model[2].weight = torch.nn.Parameter(torch.randn(8, 8))  # tied
    copy = cast_copy(model, torch.bfloat16)
    for (name, a), (_, b) in zip(model.state_dict().items(), copy.state_dict().items()):
        expected = a.to(torch.bfloat16) if a.is_floating_point() else a
        assert b.dtype == expected.dtype and torch.equal(b, expected), name
    assert copy[0].weight is copy[2].weight and model[0].weight.dtype == torch.float32


# -- the pre-checks -------------------------------------------------------------------------------------


def test_checkpoint_read_refuses_with_figures_and_passes_on_the_tiny_spec(tiny_weights, monkeypatch):
    weights = tiny_weights("llama")
    monkeypatch.delenv(AVAILABLE_ENV, raising=False)
    figures = check_checkpoint_read_fits(weights)  # the measured figure: never a false refusal here
    assert figures["bytes"] < 1 << 30
    monkeypatch.setenv(AVAILABLE_ENV, "1M")
    with pytest.raises(MemoryTooSmall) as caught:
        check_checkpoint_read_fits(weights)
    message = str(caught.value)
    assert f"reading the checkpoint {weights} into the FP32 port will not fit in memory" in message
    assert "of tensors as stored +" in message and f"({AVAILABLE_ENV}=1M)" in message
    assert "--autoport-layers=N" in message and "fewer or smaller buckets" in message


def test_low_precision_copy_refuses_with_figures(monkeypatch):
    model = torch.nn.Linear(1024, 1024)
    assert module_bytes(model, torch.bfloat16) == (1024 * 1024 + 1024) * 2
    monkeypatch.setenv(AVAILABLE_ENV, "64M")
    with pytest.raises(
        MemoryTooSmall, match=r"the port's bfloat16 copy will not fit .* \(0\.00 GiB of tensors"
    ):
        check_copy_fits("the port's bfloat16 copy", model, torch.bfloat16)
    monkeypatch.setenv(AVAILABLE_ENV, "1G")
    assert check_copy_fits("the port's bfloat16 copy", model, torch.bfloat16)["available_bytes"] == 1 << 30


def test_session_does_not_read_a_checkpoint_that_will_not_fit(tiny_weights, monkeypatch):
    from pytest_autoport import checkpoint
    from tests.helpers import llama_session

    session = llama_session(tiny_weights("llama"))
    monkeypatch.setattr(checkpoint, "load_state_dict", lambda *a, **k: pytest.fail("read anyway"))
    monkeypatch.setenv(AVAILABLE_ENV, "1M")
    with pytest.raises(MemoryTooSmall, match=r"needs about 0\.\d+ GiB"):
        session.hf_state_dict  # noqa: B018


# -- a verdict ------------------------------------------------------------------------------------------

RECORDER = """
import json, weakref
import pytest
from pytest_autoport.memory_plan import RELEASABLE
from pytest_autoport.plugin import STATE

HELD, REFS = {}, {}

def pytest_runtest_setup(item):
    session = item.config.stash[STATE].session
    HELD[item.name] = sorted(n for n in RELEASABLE if n in session.__dict__)
    HELD[item.name + ":dead"] = sorted(n for n, ref in REFS.items() if ref() is None)

def pytest_runtest_teardown(item):
    session = item.config.stash[STATE].session
    for name in ("hf_model", "hf_model_lp", "port", "port_lp", "hf_state_dict"):
        if name in session.__dict__ and name not in REFS and name != "hf_state_dict":
            REFS[name] = weakref.ref(session.__dict__[name])

def pytest_sessionfinish(session):
    with open("held.json", "w") as out:
        json.dump(HELD, out)
"""


def test_verdict_releases_by_the_selection(port_project):
    (port_project.root / "conftest.py").write_text(RECORDER)
    selection = "weights or embedding or model or compile or generate or golden"
    result = port_project.run("-k", selection)
    statuses = port_project.statuses()
    assert set(statuses.values()) == {"passed"}, result.stdout.str()[-3000:]
    assert list(statuses) == [
        "weights",
        "component[embedding]",
        "component[embedding-bfloat16]",
        "model",
        "model[bfloat16]",
        "compile",
        "generate",
        "golden",
    ]
    held = json.loads((port_project.root / "held.json").read_text())
    assert held["component[embedding]"] == ["port"]  # the checkpoint tensors went after weights
    assert held["model"] == ["hf_model_lp", "hf_trace", "port", "port_lp"]  # HF cast into its copy
    assert held["golden"] == []
    # the models themselves are gone, not only out of the session
    assert held["golden:dead"] == ["hf_model", "hf_model_lp", "port", "port_lp"]
