"""Which buffers of a port are its KV caches: declared by the port, the ``_cache`` name suffix only as a
fallback, and checked against what one forward pass actually writes.

A module declares caches with a ``kv_cache_names`` attribute: the names of buffers of that module (or,
dotted, of its submodules). As soon as any module of a port declares, only declared buffers are caches;
a port that declares nothing has its buffers whose names end in ``_cache`` treated as caches. The
harness zeroes caches between runs and shares them between compiled graphs, and never touches any
other buffer.
"""

from __future__ import annotations

import torch

from .errors import StageFailure

DECLARATION = "kv_cache_names"
SUFFIX = "_cache"


def declared_cache_names(module: torch.nn.Module) -> list[str] | None:
    """Fully qualified names of the buffers declared as caches under ``module``; None when no submodule
    declares (then the suffix fallback applies)."""
    found: list[str] | None = None
    for prefix, sub in module.named_modules():
        names = getattr(sub, DECLARATION, None)
        if names is None:
            continue
        if isinstance(names, str):
            names = (names,)
        found = found if found is not None else []
        for name in names:
            try:
                sub.get_buffer(name)
            except AttributeError:
                owner = type(sub).__name__
                raise StageFailure(
                    f"{owner}.{DECLARATION} names {name!r}, which is not a buffer of "
                    f"{prefix or 'the port'} (register it with register_buffer)"
                ) from None
            full = f"{prefix}.{name}" if prefix else name
            if full not in found:
                found.append(full)
    return found


def kv_cache_buffers(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The KV-cache buffers of ``module`` by fully qualified name (declared, else by suffix)."""
    declared = declared_cache_names(module)
    if declared is not None:
        return {name: module.get_buffer(name) for name in declared}
    return {name: buf for name, buf in module.named_buffers() if name.rsplit(".", 1)[-1].endswith(SUFFIX)}


def reset_kv_cache(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for buf in kv_cache_buffers(module).values():
            buf.zero_()


@torch.no_grad()
def written_buffers(module: torch.nn.Module, forward) -> list[str]:
    """Names of the buffers that ``forward()`` changes; every buffer is restored afterwards."""
    before = {name: buf.clone() for name, buf in module.named_buffers()}
    try:
        forward()
        after = dict(module.named_buffers())
        return [name for name, old in before.items() if not torch.equal(after[name], old)]
    finally:
        for name, old in before.items():
            module.get_buffer(name).copy_(old)


def check_declaration(module: torch.nn.Module, written: list[str]) -> dict:
    """Compare the caches the port declares (or that the suffix picks) with the buffers one
    context-encoding step wrote; raise ``StageFailure`` naming the first buffer that disagrees."""
    declared = declared_cache_names(module)
    caches = list(kv_cache_buffers(module))
    how = f"declared in {DECLARATION}" if declared is not None else f"picked by the {SUFFIX!r} name suffix"
    figures = {"kv_cache_buffers": caches, "kv_cache_declared": declared is not None}
    never = [name for name in caches if name not in written]
    if never:
        hint = (
            "drop it from the declaration"
            if declared is not None
            else f"if it is a constant table, declare the real caches with a {DECLARATION} attribute "
            "(then no other buffer is treated as a cache)"
        )
        raise StageFailure(
            f"buffer {never[0]!r} is a KV cache ({how}) but one context-encoding step never writes it: "
            f"{hint}; the harness would zero it between runs",
            {**figures, "kv_cache_never_written": never},
        )
    undeclared = [name for name in written if name not in caches]
    if undeclared:
        raise StageFailure(
            f"buffer {undeclared[0]!r} is written by the forward pass but is not a KV cache ({how} are: "
            f"{_short(caches)}): name it in a {DECLARATION} attribute of its module, or stop writing it; "
            "an undeclared cache is neither reset between runs nor shared between compiled graphs",
            {**figures, "kv_cache_undeclared_writes": undeclared},
        )
    return figures


def _short(names: list[str]) -> str:
    if not names:
        return "none"
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def check_port_caches(session) -> dict:
    """The ``weights`` stage's cache check on the eager FP32 port, where the target can observe buffer
    writes (the torch target); {} elsewhere."""
    observe = getattr(session.target, "buffers_written", None)
    if observe is None:
        return {}
    port = session.port
    if session.is_encoder_decoder:
        written = observe(port, session.probe_ids, session.decoder_probe_ids)
    else:
        written = observe(port, session.probe_ids)
    return check_declaration(port, written)
