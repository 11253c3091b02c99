"""Targets run a port: ``torch`` (portable reference, runs everywhere) and ``nxdi`` (real NxD Inference)."""

from __future__ import annotations

from .base import CompiledModel, CompileResult, GenerationResult, Target

__all__ = ["CompiledModel", "CompileResult", "GenerationResult", "Target", "get_target"]


def get_target(name: str) -> Target:
    if name == "torch":
        from .torch_target import TorchTarget

        return TorchTarget()
    if name == "nxdi":
        from .nxdi import NxdiTarget

        return NxdiTarget()
    raise ValueError(f"unknown target {name!r}; expected 'torch' or 'nxdi'")
