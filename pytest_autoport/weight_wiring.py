"""Crossed wiring in a conversion: port tensors filled from the checkpoint tensor named like another
one (k_proj from v_proj and v_proj from k_proj, layer 0 from layer 1 and back). Every count and shape
still fits, so the mapping check passes and the numeric stages fail far from the cause; this names it.

Only renames and views are judged (a converted tensor sharing an HF tensor's storage): a tensor the
conversion computes (fused, transposed into a copy) has no single source to compare names with."""

from __future__ import annotations

from collections import defaultdict

import torch


def storage_id(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().data_ptr()


def name_signature(key: str) -> tuple:
    """What a tensor's name says it holds: its indices (layer, expert) and its last two name parts
    (``q_proj.weight``), whatever prefix a port or checkpoint puts in front."""
    parts = key.split(".")
    indices = tuple(p for p in parts if p.isdigit())
    words = tuple(p for p in parts if not p.isdigit())
    return indices, words[-2:]


def crossed_tensors(converted: dict, hf_state: dict) -> list[str]:
    """One line per port tensor filled from an HF tensor whose name says something else, where the HF
    tensor named like the port tensor went to yet another port tensor that does not match its name:
    a permutation of sources, which a deliberate rename does not produce."""
    hf_by_storage = defaultdict(list)
    hf_by_signature = defaultdict(list)
    for key, tensor in hf_state.items():
        if not isinstance(tensor, torch.Tensor):
            continue
        hf_by_storage[storage_id(tensor)].append(key)
        hf_by_signature[name_signature(key)].append(key)

    sources = {}  # port key -> the HF keys it is a rename or view of
    for key, tensor in converted.items():
        found = isinstance(tensor, torch.Tensor) and hf_by_storage.get(storage_id(tensor))
        if found:
            sources[key] = found
    off_name = {
        port: hf[0]
        for port, hf in sources.items()
        if all(name_signature(h) != name_signature(port) for h in hf)
    }
    went_off_name = defaultdict(list)  # HF key -> port keys it filled that are not named like it
    for port, hf in sources.items():
        if port in off_name:
            for h in hf:
                went_off_name[h].append(port)

    lines = []
    for port, source in sorted(off_name.items()):
        namesakes = [h for h in hf_by_signature.get(name_signature(port), []) if went_off_name.get(h)]
        if namesakes:
            elsewhere = ", ".join(went_off_name[namesakes[0]])
            lines.append(f"{port} <- {source} (while {namesakes[0]} went to {elsewhere})")
    return lines
