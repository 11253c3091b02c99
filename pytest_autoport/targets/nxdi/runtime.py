"""Importing NxD / NxDI lazily and in the right mode, and turning their errors into stage failures.

Nothing from the Neuron SDK is imported at module level anywhere in the harness: NxDI's config
module already needs torch_neuronx. NxD reads ``NXD_CPU_MODE`` (once at import before
neuronx-distributed 0.11, at each call since), so it is set before the first NxD import.
"""

from __future__ import annotations

import importlib
import os
import sys
from contextlib import contextmanager

from ...errors import AutoportError, StageFailure, TargetUnavailable

NXDI = "neuronx_distributed_inference"


def nxd_imported() -> bool:
    return any(name in sys.modules for name in ("neuronx_distributed", NXDI))


def nxdi(module: str):
    """Import an NxDI/NxD module; before the first NxD import of the process, CPU mode is switched on."""
    if not nxd_imported():
        os.environ["NXD_CPU_MODE"] = "1"
    return importlib.import_module(module)


def _frozen_cpu_mode():
    """True/False where an old neuronx-distributed (< 0.11) fixed CPU mode at import, else None."""
    return getattr(sys.modules.get("neuronx_distributed.utils"), "CPU_MODE", None)


def enter_cpu_mode() -> None:
    os.environ["NXD_CPU_MODE"] = "1"
    if _frozen_cpu_mode() is False:
        raise TargetUnavailable(
            "this neuronx-distributed reads NXD_CPU_MODE once, at import, and was imported in device mode: "
            "run the eager stages (weights, component, model) in their own pytest process"
        )


def release_process_group() -> None:
    """Tear down NxD's model-parallel state and the process group, where they exist.

    ``to_cpu()`` initialises the gloo group itself, unconditionally when ``WORLD_SIZE`` is set
    (torchrun), so a second ``to_cpu()`` in one process needs the first group gone; device tracing
    also makes its own group."""
    import torch

    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    parallel_state = nxdi("neuronx_distributed.parallel_layers.parallel_state")
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    torch.distributed.destroy_process_group()


def leave_cpu_mode() -> None:
    """Device work: drop the gloo group ``to_cpu()`` made and leave CPU mode."""
    if _frozen_cpu_mode() is True:
        raise TargetUnavailable(
            "this neuronx-distributed reads NXD_CPU_MODE once, at import, and was imported in CPU mode: "
            "run the device stages (compile, generate, golden) in their own pytest process"
        )
    if os.environ.get("NXD_CPU_MODE") == "1":
        testing = nxdi(f"{NXDI}.utils.testing")
        try:
            testing.destroy_cpu_env()
        except ModuleNotFoundError as exc:  # its last step imports fairscale, a test-only dependency
            if exc.name != "fairscale":
                raise
    os.environ["NXD_CPU_MODE"] = "0"


@contextmanager
def step(what: str):
    """Turn an NxDI exception into a StageFailure that names the API call that raised it."""
    try:
        yield
    except AutoportError:
        raise
    except Exception as exc:
        raise StageFailure(f"nxdi: {what} failed: {type(exc).__name__}: {exc}") from exc


@contextmanager
def environ(**values: str):
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old
