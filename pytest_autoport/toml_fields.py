"""A dataclass built from a TOML table, every key and type checked, each problem one ``SpecError``
naming the field (``port.max_seq_len``)."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path

from .errors import SpecError


def build_table(cls, values, path: Path, where: str):
    if not isinstance(values, dict):
        raise SpecError(path, where, "must be a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in values:
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise SpecError(path, f"{where}.{key}", f"unknown key; {hint}expected one of {sorted(fields)}")
    for name, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and name not in values:
            raise SpecError(path, f"{where}.{name}", "missing required field")
        if name in values and not matches(values[name], hints[name]):
            raise SpecError(
                path,
                f"{where}.{name}",
                f"expected {describe(hints[name])}, got {type(values[name]).__name__} {values[name]!r}",
            )
    return cls(**values)


def matches(value, hint) -> bool:
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(matches(v, item) for v in value)
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, h) for h in typing.get_args(hint))
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def describe(hint) -> str:
    origin = typing.get_origin(hint)
    if origin is list:
        return f"a list of {describe(typing.get_args(hint)[0])}"
    if typing.get_args(hint):
        return " or ".join(describe(h) for h in typing.get_args(hint))
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(
        hint, getattr(hint, "__name__", str(hint))
    )
