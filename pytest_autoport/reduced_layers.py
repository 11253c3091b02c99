"""Reduced-layer mode (``--autoport-layers=N``): judge the first N decoder layers of the real checkpoint.

The HF config is cut to N layers, so the HF reference, the port, the components, the compiled graphs and
the golden are all those of the same N-layer model; the checkpoint's tensors of the later layers are
expected to go unused and are left out of the weight mapping (counted, never an error).
"""

from __future__ import annotations

import copy
import re

from .errors import AutoportError

OPTION = "--autoport-layers"
DEFAULT_LAYER_PREFIXES = ("model.layers.",)


def truncate_config(config, layers: int):
    """A copy of the HF ``config`` with its first ``layers`` decoder layers; per-layer lists cut too."""
    total = getattr(config, "num_hidden_layers", None)
    if getattr(config, "is_encoder_decoder", False) or not isinstance(total, int):
        raise AutoportError(f"{OPTION}: reduced-layer mode supports decoder-only models (num_hidden_layers)")
    if not 1 <= layers < total:
        raise AutoportError(
            f"{OPTION}={layers}: the model has {total} decoder layers; give 1..{total - 1} "
            f"(or leave {OPTION} out to judge all {total})"
        )
    reduced = copy.deepcopy(config)
    reduced.num_hidden_layers = layers
    for name, value in vars(config).items():
        if isinstance(value, list) and len(value) == total and name.startswith("layer"):
            setattr(reduced, name, value[:layers])  # e.g. layer_types (sliding / full attention)
    return reduced


def layer_prefixes(spec) -> tuple[str, ...]:
    """Where the checkpoint keeps its decoder layers (``model.layers.``), from the spec's per-layer
    components' HF module paths."""
    found = {c.hf_module.split("{i}")[0] for c in spec.components if "{i}" in c.hf_module}
    return tuple(sorted(found)) or DEFAULT_LAYER_PREFIXES


def later_layer_keys(keys, prefixes: tuple[str, ...], layers: int) -> list[str]:
    """The keys of ``keys`` that belong to decoder layers ``layers`` and above."""
    pattern = re.compile("^(?:" + "|".join(re.escape(p) for p in prefixes) + r")(\d+)\.")
    return [k for k in keys if (m := pattern.match(k)) and int(m[1]) >= layers]


def layers_text(judged: int, total: int | None) -> str:
    return f"first {judged} of {total} layers" if total else f"first {judged} layers"
