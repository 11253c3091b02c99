"""Artifact keys: sha256 of the canonical JSON of everything that changes an artifact."""

from __future__ import annotations

import enum
import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

from .common import KEY_LENGTH

_NAME_RE = re.compile(r"^[A-Za-z0-9_+][A-Za-z0-9._+-]*$")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, PurePath):
        return obj.as_posix()
    if isinstance(obj, (set, frozenset)):
        return sorted(_canonical_json(item) for item in obj)
    if isinstance(obj, (bytes, bytearray)):
        return obj.hex()
    if isinstance(obj, enum.Enum):
        return obj.value
    text = str(obj)
    if " at 0x" in text:  # an address would make the key differ on every run
        raise TypeError(f"artifact key inputs must be JSON-like; cannot hash {type(obj).__name__}: {text}")
    return text  # e.g. torch.float16 -> "torch.float16"


def _canonical_json(inputs: Any) -> str:
    return json.dumps(
        inputs, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json_default
    )


def artifact_key(inputs: dict) -> str:
    """sha256 of the canonical JSON of ``inputs`` (sorted keys), first 16 hex characters."""
    if not isinstance(inputs, Mapping):
        raise TypeError(f"artifact key inputs must be a dict, got {type(inputs).__name__}")
    return hashlib.sha256(_canonical_json(dict(inputs)).encode("utf-8")).hexdigest()[:KEY_LENGTH]


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(
            f"artifact name {name!r} must be non-empty, start with a letter, digit, '_' or '+', "
            "and hold only letters, digits, '.', '_', '+' and '-'"
        )
