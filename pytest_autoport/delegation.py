"""Catches a port that delegates to the HF model instead of computing with its own modules.

While the port runs, a global forward pre-hook records every module that runs. A port may reuse any
module class (NxDI's Llama runs transformers' ``LlamaRMSNorm``), but the modules it runs must sit in
its own module tree, where the conversion filled their weights. Flagged: a transformers
``PreTrainedModel`` that runs (a whole HF model, wherever it is held), and a module holding parameters
of its own that is not in the port's tree (weights the conversion never saw).
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import torch

from .errors import StageFailure

_SKIPPED_FRAMES = (Path(torch.__file__).parent, Path(__file__).parent)


class PortDelegates(StageFailure):
    """The port ran a module outside its own tree: no numeric check of it means anything."""


@contextlib.contextmanager
def own_modules_only(port: torch.nn.Module, *, foreign_weights: bool = True):
    """Run the port inside this block; raises ``PortDelegates`` when it ran foreign modules.

    ``foreign_weights`` False checks only for transformers models (a target whose runtime drives
    the port through wrapper modules of its own)."""
    own = {id(m) for m in port.modules()}
    found: list[tuple[torch.nn.Module, str]] = []

    def pre_hook(module, args):
        if found or id(module) in own:
            return
        if _is_hf_model(module) or (foreign_weights and any(True for _ in module.parameters(recurse=False))):
            found.append((module, _caller()))

    handle = torch.nn.modules.module.register_module_forward_pre_hook(pre_hook)
    try:
        yield
    finally:
        handle.remove()
    if found:
        module, caller = found[0]
        cls = type(module)
        kind = "a transformers model" if _is_hf_model(module) else "a module with its own weights"
        raise PortDelegates(
            f"the port calls {cls.__module__}.{cls.__qualname__} ({kind}, called from {caller}), which is "
            "not part of its module tree: a port must compute with its own modules and the converted weights"
        )


def _is_hf_model(module: torch.nn.Module) -> bool:
    transformers = sys.modules.get("transformers")
    return transformers is not None and isinstance(module, transformers.PreTrainedModel)


def _caller() -> str:
    """The innermost frame outside torch, transformers and this harness: the port's line that called."""
    skipped = _SKIPPED_FRAMES + tuple(
        Path(m.__file__).parent for m in (sys.modules.get("transformers"),) if m is not None and m.__file__
    )
    frame = sys._getframe(2)
    while frame is not None:
        file = Path(frame.f_code.co_filename)
        if not any(file.is_relative_to(folder) for folder in skipped):
            return f"{file}:{frame.f_lineno} in {frame.f_code.co_name}"
        frame = frame.f_back
    return "outside the port"
