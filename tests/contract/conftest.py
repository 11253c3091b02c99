"""CONTRACT tests of the ``nxdi`` target. They are NOT hardware validation, and they run no NxDI.

The Neuron SDK cannot be installed here and there are no NeuronCores, so these tests put a stand-in
package (``stand_in/``: ``neuronx_distributed_inference``, ``neuronx_distributed``, ``torch_neuronx``)
on ``sys.path``. It imitates only the names and signatures the adapter calls, as read from NxDI's
source (see ``kb/nxdi_target.md``), and records every call in ``_standin_log``. A passing test shows
that the adapter calls that API in the right order with the right arguments and handles its
failures; it shows nothing about NxDI's behaviour, its numerics, the compiler or the hardware.
Its toy model is a causal LM (positions and mask matter), ``causal_reference`` gives the no-cache
answer, and the ``causal_contract`` fixture checks every recorded forward's inputs. A test whose
assertion is only a value the stand-in makes itself is marked ``stand_in_value``.

The ``stand_in`` fixture adds the stand-in for one test and removes it (``sys.path`` and every
module it brought into ``sys.modules``) afterwards; tests without it see the real environment. The
NxD environment variables the adapter sets are restored after every test here.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
from causal_reference import causal_lm_violations

HERE = Path(__file__).parent
STAND_IN = HERE / "stand_in"
PORT_FILE = HERE / "stand_in_port" / "standin_port_tiny.py"
STAND_IN_MODULES = (
    "_standin_log",
    "neuronx_distributed_inference",
    "neuronx_distributed",
    "torch_neuronx",
    "standin_port_tiny",
)
NXD_ENV = (
    "NXD_CPU_MODE",
    "BASE_COMPILE_WORK_DIR",
    "NEURON_CC_FLAGS",
    "AUTOPORT_NXDI_COMPONENTS",
    "PYTHONPATH",
)
TINY_CONFIG = {
    "model_type": "tiny",
    "vocab_size": 32,
    "hidden_size": 8,
    "num_hidden_layers": 2,
    "torch_dtype": "float32",
}
SPEC = """
[model]
name = "tiny"
hf_model_class = "LlamaForCausalLM"
model_id = "stand-in/tiny"
weights_path = "weights"

[port]
model_class = "{port}:{cls}"
target = "nxdi"
dtype = "float32"
batch_size = {batch}
context_buckets = [8, 16]
token_generation_buckets = [16, 32]
max_seq_len = 32
tp_degree = 2

[validation]
prompts = ["one", "two"]
"""


def _real_nxdi_here() -> str | None:
    """Where a real NxD Inference comes from in this session, if any: the stand-in and a real NxDI
    cannot share one process (the real one's submodules would answer the stand-in's imports)."""
    if os.environ.get("AUTOPORT_NXDI_SRC"):
        return "AUTOPORT_NXDI_SRC is set"
    found = importlib.util.find_spec("neuronx_distributed_inference")
    if found is not None and STAND_IN not in Path(found.origin or "").parents:
        return f"neuronx_distributed_inference is installed ({found.origin})"
    return None


def pytest_collection_modifyitems(config, items):
    """The contract tier stands in for NxDI where there is none; with a real one, the real-NxDI tier
    (tests/real_nxdi) judges the nxdi target instead."""
    real = _real_nxdi_here()
    if real is None:
        return
    skip = pytest.mark.skip(
        reason=f"contract tier skipped: a real NxDI is in use ({real}); see tests/real_nxdi"
    )
    for item in items:
        if HERE in Path(str(item.path)).parents:
            item.add_marker(skip)


def _purge_stand_in_modules() -> None:
    for name in list(sys.modules):
        if name.split(".", 1)[0] in STAND_IN_MODULES:
            del sys.modules[name]


@pytest.fixture(autouse=True)
def _restore_nxd_environment():
    saved = {name: os.environ.get(name) for name in NXD_ENV}
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def stand_in(monkeypatch):
    """The stand-in NxDI on sys.path for this test; yields its call log module."""
    _purge_stand_in_modules()
    for name in NXD_ENV:
        os.environ.pop(name, None)
    monkeypatch.syspath_prepend(str(STAND_IN))  # undone after the test, with any path the test added
    log = importlib.import_module("_standin_log")
    log.CALLS.clear()
    log.FAIL_AT.clear()
    log.OPTIONS.clear()
    try:
        yield log
    finally:
        _purge_stand_in_modules()


@pytest.fixture
def make_spec(tmp_path):
    """A PortSpec for the toy port (class ``cls``), with a config.json in its weights folder."""
    from pytest_autoport.spec import load_spec

    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "config.json").write_text(json.dumps(TINY_CONFIG))
    _write_checkpoint(weights / "model.safetensors")

    def make(cls: str = "NeuronTinyForCausalLM", batch: int = 1):
        path = tmp_path / "port_specs" / f"{cls}-{batch}.toml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(SPEC.format(port=PORT_FILE, cls=cls, batch=batch))
        return load_spec(path, tmp_path, check_imports=False)

    return make


@pytest.fixture
def compile_toy(stand_in, make_spec, tmp_path):
    """``compile_toy(batch=1) -> (spec, eager port, loaded compiled model)`` of the toy port; the call
    log starts empty after."""
    import torch

    from pytest_autoport.targets.nxdi import NxdiTarget

    def make(batch: int = 1):
        spec = make_spec(batch=batch)
        target = NxdiTarget()
        port = target.build_port(spec, None, torch.float32)
        out_dir = tmp_path / f"artifact-batch{batch}"
        out_dir.mkdir()
        model = target.load_compiled(spec, out_dir, target.compile(port, spec, out_dir))
        stand_in.CALLS.clear()
        return spec, port, model

    return make


@pytest.fixture
def compiled(compile_toy):
    """(spec, eager port, loaded compiled model) of the toy port; the call log starts empty after."""
    return compile_toy()


def _write_checkpoint(path: Path) -> None:
    """An HF-style checkpoint of the toy port (seeded), which the stand-in loads as NxDI would."""
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(1)
    h, v = TINY_CONFIG["hidden_size"], TINY_CONFIG["vocab_size"]
    tensors = {"model.embed_tokens.weight": torch.randn(v, h, generator=g)}
    for i in range(TINY_CONFIG["num_hidden_layers"]):
        tensors[f"model.layers.{i}.mlp.up_proj.weight"] = torch.randn(2 * h, h, generator=g) / h**0.5
        tensors[f"model.layers.{i}.mlp.down_proj.weight"] = torch.randn(h, 2 * h, generator=g) / h**0.5
    tensors["model.norm.weight"] = 1 + 0.1 * torch.randn(h, generator=g)
    tensors["lm_head.weight"] = torch.randn(v, h, generator=g) / h**0.5
    save_file(tensors, str(path))


@pytest.fixture
def causal_contract(stand_in):
    """``check(lengths=None)``: assert the forwards recorded so far keep a causal LM's input contract."""

    def check(lengths: list[list[int]] | None = None) -> None:
        problems = causal_lm_violations(stand_in.find("app.forward"), lengths)
        assert not problems, "\n".join(problems)

    return check
