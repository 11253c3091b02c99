"""Reading a saved exported program (``torch.export.load``) in about half its usual time.

torch's deserializer asks ``typing.get_type_hints`` for the fields of its schema classes once per
deserialized object (tens of thousands per graph), and that call resolves every annotation again
each time: more than a third of a graph's load. The schema classes never change while a process
runs, so their hints are looked up once here. The program read is exactly the one
``torch.export.load`` gives; where torch's deserializer is laid out otherwise, this is plain
``torch.export.load``.
"""

from __future__ import annotations

import functools
import threading
import typing
from pathlib import Path

_lock = threading.Lock()


class _TypingWithSchemaHints:
    """``typing`` as the deserializer sees it, with the schema classes' hints memoised."""

    def __init__(self, schema_namespace: dict):
        self._schema_namespace = schema_namespace
        self._hints = functools.lru_cache(maxsize=None)(self._schema_hints)

    def _schema_hints(self, cls):
        return typing.get_type_hints(cls, globalns=self._schema_namespace)

    def get_type_hints(self, obj, globalns=None, localns=None, include_extras=False):
        if globalns is self._schema_namespace and localns is None and not include_extras:
            return dict(self._hints(obj))
        return typing.get_type_hints(obj, globalns, localns, include_extras)

    def __getattr__(self, name):
        return getattr(typing, name)


@functools.cache
def _fast_typing(serialize) -> _TypingWithSchemaHints | None:
    schema = getattr(serialize, "schema", None)
    if getattr(serialize, "typing", None) is not typing or schema is None:
        return None
    return _TypingWithSchemaHints(vars(schema))


def load_program(path: Path):
    """``torch.export.load(path)``, faster."""
    import torch

    try:
        from torch._export.serde import serialize
    except ImportError:
        return torch.export.load(path)
    fast = _fast_typing(serialize)
    if fast is None:
        return torch.export.load(path)
    with _lock:
        serialize.typing = fast
        try:
            return torch.export.load(path)
        finally:
            serialize.typing = typing
