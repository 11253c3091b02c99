"""Compiled graphs loaded when first run: a verdict whose prompts never reach a bucket does not pay
for reading that bucket's graph (reading an exported program back costs a few tenths of a second of
CPU per graph on a small port, seconds on a large one)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import torch

from .base import CompileResult
from .export_load import load_program
from .shared_weights import bind_weights


class GraphsOnDemand(Mapping):
    """Graph name -> loaded graph; ``load(name)`` runs on the first lookup of each name only. Listing
    the names (the buckets) loads nothing."""

    def __init__(self, names, load: Callable[[str], object]):
        self._names = list(names)
        self._load = load
        self._loaded: dict[str, object] = {}

    def __getitem__(self, name: str):
        if name not in self._loaded:
            if name not in self._names:
                raise KeyError(name)
            self._loaded[name] = self._load(name)
        return self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    @property
    def loaded(self) -> list[str]:
        """The names loaded so far, in the order they were first run."""
        return list(self._loaded)


def load_exported(
    out_dir: Path, result: CompileResult, weights: dict[str, torch.Tensor], cache: dict[str, torch.Tensor]
) -> GraphsOnDemand:
    """Every exported graph, each bound to ``weights`` (one memory-mapped copy) and to ``cache`` when
    it is first run."""
    shared = {**weights, **cache}

    def load(name: str) -> torch.nn.Module:
        file = out_dir / result.graphs[name]
        module = load_program(file).module()
        bind_weights(module, shared, str(file))
        return module

    return GraphsOnDemand(result.graphs, load)
