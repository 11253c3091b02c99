"""Quantised checkpoints: writing tiny ones (MXFP4, INT8 weight-only) and loading their float reference.

``quantize_checkpoint`` rewrites a saved float HF folder into the quantised layout of the real
checkpoints; ``reference_loader`` tells how the HF reference loads such a folder (None: the usual
``from_pretrained``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

SCHEMES: dict[str, Callable] = {}


def quantize_checkpoint(folder: Path, scheme: str, config) -> None:
    if scheme not in SCHEMES:
        raise ValueError(f"unknown quantisation scheme {scheme!r}; known: {sorted(SCHEMES)}")
    SCHEMES[scheme](folder, config)


def reference_loader(folder: Path) -> Callable | None:
    """A loader ``(model_cls, folder, dtype) -> model`` for quantised folders, else None."""
    return None
