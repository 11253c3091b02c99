"""What a failing mixture-of-experts check means when the router and the experts each pass.

A MoE block (``mlp`` holding a ``router`` and ``experts`` component) combines the two: it picks each
token's top-k experts from the router's scores, weights their outputs and renormalises the weights. When
the block's check fails but its router's and experts' checks of the same layer and precision passed
earlier in the run, neither part is wrong: the combination is, and the failure message says so.
"""

from __future__ import annotations

from .router_taps import ROUTER_NAMES

EXPERTS_NAMES = ("experts",)


def stage_id(component, layer, dtype) -> str:
    """``component[<name>[-layer<i>][-<dtype>]]``, as the stage plan names it."""
    suffix = component.name if layer is None else f"{component.name}-layer{layer}"
    return f"component[{suffix}{f'-{dtype}' if dtype else ''}]"


def moe_parts(spec, component) -> tuple[list, list]:
    """(routers, experts): the spec's components of those names inside ``component``'s module."""
    inside = [c for c in spec.components if c is not component and _inside(c.hf_module, component.hf_module)]
    return [c for c in inside if c.name in ROUTER_NAMES], [c for c in inside if c.name in EXPERTS_NAMES]


def moe_block(spec, module_path: str, layer):
    """The MoE block component holding ``module_path`` (its path or a module inside it) in ``layer``; a
    MoE block has a router and experts inside and no other such component inside it (so a decoder layer
    is none). None when there is none."""
    holders = [c for c in spec.components if c.per_layer == (layer is not None) and all(moe_parts(spec, c))]
    for block in holders:
        if any(o is not block and _inside(o.hf_module, block.hf_module) for o in holders):
            continue
        names = [block.hf_module, block.port_module, *block.hf_module_aliases]
        if any(name and _inside(module_path, name.format(i=layer), or_same=True) for name in names):
            return block
    return None


def combination_hint(session, module_path: str | None, layer, dtype, outcomes: dict) -> str | None:
    """The sentence for a failure in the MoE block holding ``module_path`` (see ``moe_block``) when its
    router and experts checks of the same layer and precision passed in this run, else None."""
    block = moe_block(session.spec, module_path, layer) if module_path else None
    if block is None:
        return None
    routers, experts = moe_parts(session.spec, block)
    passed = [stage_id(c, layer, dtype) for c in (*routers, *experts)]
    if not all(outcomes.get(s) == "passed" for s in passed):
        return None
    hint = (
        f"{' and '.join(passed)} passed: router and experts each match HF, so their combination "
        "(expert selection, weighting, renormalisation) diverges"
    )
    others = _unchecked_children(session, block, [*routers, *experts], layer)
    return hint + (f", or {', '.join(others)} (not checked on its own)" if others else "")


def _unchecked_children(session, block, parts, layer) -> list[str]:
    """The HF block's submodules with weights that neither the router nor the experts check covers
    (a shared expert, say): a fault there fails the block too."""
    hf = {(name, at): path for name, path, _, at in session.module_paths if at == layer}
    if (block.name, layer) not in hf:
        return []
    root = hf[block.name, layer]
    covered = {hf[p.name, layer] for p in parts if (p.name, layer) in hf}
    hf_block = session.hf_model.get_submodule(root)
    return [
        name
        for name, child in hf_block.named_children()
        if f"{root}.{name}" not in covered and any(True for _ in child.parameters())
    ]


def _inside(path: str, root: str, or_same: bool = False) -> bool:
    return path.startswith(root + ".") or (or_same and path == root)
