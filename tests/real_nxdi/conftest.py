"""The real-NxDI tier: the ``nxdi`` target against NxDI's and NxD's own code, in CPU mode.

It needs the source of NxDI 0.9.0 (commit 4bcdc54bf3b6) and NxD 0.18.0 (commit fbac349b61a3):
``AUTOPORT_NXDI_SRC`` names a folder holding their ``neuronx_distributed_inference`` and
``neuronx_distributed`` package folders (or an installed SDK provides them), and transformers
4.57.x (what NxDI 0.9 supports). The Neuron SDK's binary packages, which CPU mode imports but never
calls, are replaced by ``binary_stand_ins`` where missing. Without the source every test here skips
with one line saying how to enable the tier.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
SITE = HERE / "site"  # sitecustomize for the processes the tier starts
REPO = HERE.parents[1]
SRC_ENV = "AUTOPORT_NXDI_SRC"
PACKAGES = ("neuronx_distributed_inference", "neuronx_distributed")
ENABLE = (
    f"real-NxDI tier disabled: set {SRC_ENV} to a folder holding the neuronx_distributed_inference "
    "(NxDI 4bcdc54bf3b6) and neuronx_distributed (NxD fbac349b61a3) package folders, in a "
    "transformers 4.57.x venv (see kb/nxdi_target.md)"
)


def _why_not() -> str | None:
    src = os.environ.get(SRC_ENV)
    if src:
        missing = [p for p in PACKAGES if not (Path(src) / p / "__init__.py").is_file()]
        if missing:
            return f"{ENABLE}; {src} lacks {', '.join(missing)}"
    elif any(importlib.util.find_spec(p) is None for p in PACKAGES):
        return ENABLE
    import transformers

    if not transformers.__version__.startswith("4.57."):
        return f"{ENABLE}; this venv has transformers {transformers.__version__}"
    lacking = [name for name in ("boto3", "tenacity") if importlib.util.find_spec(name) is None]
    if lacking:  # pure-Python packages neuronx_distributed imports
        return f"{ENABLE}; this venv lacks {' and '.join(lacking)} (pip install boto3 tenacity)"
    return None


REASON = _why_not()


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.real_nxdi)
            if REASON:
                item.add_marker(pytest.mark.skip(reason=REASON))


@pytest.fixture(scope="session", autouse=True)
def real_nxdi_imports():
    """NxDI/NxD importable in this process (and in the processes it starts), stand-ins where needed."""
    if REASON:
        yield None
        return
    src = os.environ.get(SRC_ENV)
    if src and src not in sys.path:
        sys.path.insert(0, src)
    sys.path.insert(0, str(HERE))
    import binary_stand_ins

    stood_in = binary_stand_ins.install()
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(SITE), str(REPO)] + ([saved] if saved else []))
    yield stood_in
    if saved is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = saved


@pytest.fixture(scope="session")
def llama_nxdi_spec(tiny_weights):
    """``port_specs/llama_nxdi.toml`` on the shared tiny trained Llama checkpoint."""
    from pytest_autoport.spec import load_spec

    spec = load_spec(REPO / "port_specs" / "llama_nxdi.toml", REPO, check_imports=False)
    weights = str(tiny_weights("llama_nxdi"))
    return dataclasses.replace(spec, model=dataclasses.replace(spec.model, weights_path=weights))


@pytest.fixture(scope="session")
def hf_llama(llama_nxdi_spec):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(llama_nxdi_spec.weights_dir, torch_dtype="float32").eval()


@pytest.fixture(scope="session")
def llama_port(llama_nxdi_spec):
    """NxDI's NeuronLlamaModel after ``to_cpu()``, built by the target (one per test session)."""
    import torch

    from pytest_autoport.targets.nxdi import NxdiTarget

    return NxdiTarget().build_port(llama_nxdi_spec, None, torch.float32)
