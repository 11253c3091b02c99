"""One weight store for every bucket graph of a compiled port (issue 17, as NxDI's buckets share theirs).

At compile time the port's parameters and buffers (its KV caches aside) are written once, as
``weights.safetensors``, and each graph is saved without them. At load time the file is memory-mapped
once and the same tensors are bound into every graph, so N buckets cost one copy of the weights on disk
and in memory. Tensors that share storage in the port (tied embeddings) are stored once under one name
and listed as aliases.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import StageFailure

WEIGHTS_FILE = "weights.safetensors"


def shared_tensors(module: torch.nn.Module, exclude: set[str]) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of ``module`` by qualified name (non-persistent buffers included),
    but those in ``exclude``."""
    found = dict(module.named_parameters(remove_duplicate=False))
    found.update(module.named_buffers(remove_duplicate=False))
    return {name: t.detach() for name, t in found.items() if name not in exclude}


def save_weights(tensors: dict[str, torch.Tensor], out_dir: Path, file_name: str = WEIGHTS_FILE) -> dict:
    """Write ``tensors`` to ``out_dir/file_name``, each storage once; returns the record the loader
    needs: ``{"file": ..., "aliases": {name: stored name}}``."""
    from safetensors.torch import save_file

    stored: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for name in sorted(tensors):
        tensor = tensors[name]
        view = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape),
                tuple(tensor.stride()), tensor.dtype)  # fmt: skip
        if view in seen:
            aliases[name] = seen[view]
            continue
        seen[view] = name
        stored[name] = tensor.contiguous()
    # a partial view of a stored storage is saved as a tensor of its own (safetensors holds no views)
    storages = {}
    for name, tensor in stored.items():
        ptr = tensor.untyped_storage().data_ptr()
        if ptr in storages:
            stored[name] = tensor.clone()
        storages.setdefault(ptr, name)
    save_file(stored, str(out_dir / file_name))
    return {"file": file_name, "aliases": aliases}


def load_weights(out_dir: Path, record: dict) -> dict[str, torch.Tensor]:
    """The stored tensors memory-mapped from the artifact (pages are read on use and shared with
    the page cache), aliases resolved to the same tensors."""
    from safetensors.torch import load_file

    path = out_dir / record["file"]
    try:
        tensors = load_file(str(path))
    except (OSError, RuntimeError, ValueError) as exc:
        raise StageFailure(f"{path}: cannot read the compiled port's weights ({exc})") from None
    for name, target in record.get("aliases", {}).items():
        tensors[name] = tensors[target]
    return tensors


def strip_program(program, names: set[str]) -> None:
    """Replace ``program``'s copies of the tensors in ``names`` by meta tensors (shape and dtype only),
    so that saving it writes no weights. The port's own tensors are left untouched."""
    for table in (program.state_dict, program.constants):
        for name, value in list(table.items()):
            if name not in names or not isinstance(value, torch.Tensor):
                continue
            meta = torch.empty_like(value, device="meta")
            if isinstance(value, torch.nn.Parameter):
                meta = torch.nn.Parameter(meta, requires_grad=value.requires_grad)
            table[name] = meta


def bind_weights(module: torch.nn.Module, tensors: dict[str, torch.Tensor], where: str) -> None:
    """Point ``module``'s parameters and buffers at ``tensors`` (no copy); every tensor left on the
    meta device afterwards is an error naming it."""
    owned = dict(module.named_parameters(remove_duplicate=False))
    owned.update(module.named_buffers(remove_duplicate=False))
    for name, tensor in tensors.items():
        if name not in owned:
            continue
        owner, _, attr = name.rpartition(".")
        parent = module.get_submodule(owner) if owner else module
        if isinstance(owned[name], torch.nn.Parameter):
            parent._parameters[attr] = torch.nn.Parameter(tensor, requires_grad=False)
        else:
            parent._buffers[attr] = tensor
    unbound = [
        name
        for name, t in [
            *module.named_parameters(remove_duplicate=False),
            *module.named_buffers(remove_duplicate=False),
        ]  # fmt: skip
        if t.is_meta
    ]
    if unbound:
        raise StageFailure(f"{where}: the shared weight store lacks {', '.join(sorted(unbound)[:5])}")
