"""Compiled graphs loaded when first run: a verdict whose prompts never reach a bucket does not pay
for reading that bucket's graph (deserialising an exported program costs about half a second of CPU
per graph on a small port)."""

from __future__ import annotations

import contextlib
import typing
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import torch

from .base import CompileResult
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
        with _schema_type_hints_memoised():
            module = torch.export.load(file).module()
        bind_weights(module, shared, str(file))
        return module

    return GraphsOnDemand(result.graphs, load)


_SCHEMA_HINTS: dict[tuple, dict] = {}  # (schema class, include_extras) -> its type hints


@contextlib.contextmanager
def _schema_type_hints_memoised():
    """torch's exported-program reader resolves the type hints of the same few schema dataclasses
    once per JSON object it reads (tens of thousands of times per graph), about half its CPU time.
    Inside this block those lookups (hints of a class against the schema module's namespace, fixed
    for a process) are answered from a table; every other call goes to ``typing`` unchanged."""
    try:
        from torch._export.serde import schema
    except ImportError:  # another torch layout: nothing to speed up
        yield
        return
    real = typing.get_type_hints
    namespace = vars(schema)
    table = _SCHEMA_HINTS

    def hints(obj, globalns=None, localns=None, include_extras=False):
        if globalns is not namespace or localns is not None or not isinstance(obj, type):
            return real(obj, globalns, localns, include_extras)
        key = (obj, include_extras)
        if key not in table:
            table[key] = real(obj, globalns, None, include_extras)
        return table[key]

    typing.get_type_hints = hints
    try:
        yield
    finally:
        typing.get_type_hints = real
