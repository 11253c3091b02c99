"""Each stage item holds only what it needs: the session's big objects (checkpoint tensors, FP32 HF
reference, eager port, low-precision copies, reference traces) are released after the last selected item
that needs them, and built again, lazily, should anything need them afterwards (a user test, a failure's
hint).

The plan is made from the selected items (``-k`` included), in run order. After each item, an object is
released when no later item needs it, directly or to build something it needs that is not held. An FP32
model whose only later use is to make its low-precision copy is cast in place into that copy instead
(same values as a cast copy, without holding both).
"""

from __future__ import annotations

import gc

# the big objects, by session attribute (shared steps), in release order
RELEASABLE = (
    "hf_trace",
    "hf_trace_lp",
    "mapping",
    "hf_state_dict",
    "port_lp",
    "hf_model_lp",
    "port",
    "hf_model",
)
BUILT_FROM = {
    "hf_trace": ("hf_model",),
    "hf_trace_lp": ("hf_model_lp",),
    "hf_model_lp": ("hf_model",),
    "port": ("mapping",),
    "mapping": ("hf_state_dict",),
    "port_lp": ("port",),
}
CAST_INTO = {"hf_model": "hf_model_lp", "port": "port_lp"}  # an FP32 model -> its low-precision copy
NOTHING = frozenset()


def item_needs(stage: str, params: dict, session) -> frozenset | None:
    """The big objects one stage item uses; None for a stage this plan does not know (it keeps all)."""
    low = params.get("dtype") is not None
    if stage in ("env", "preflight", "hygiene"):
        return NOTHING
    if stage == "weights":
        return frozenset({"hf_state_dict", "mapping", "port"})
    if stage == "component":
        return frozenset({"hf_trace", "hf_model", "port_lp"} if low else {"hf_trace", "port"})
    if stage == "model":
        return frozenset({"hf_trace", "hf_trace_lp", "port_lp"} if low else {"hf_trace", "port"})
    if stage == "compile":  # the port in the compile dtype, only when no artifact is cached
        return frozenset({"port"} if session.spec.port.dtype == "float32" else {"port_lp"})
    if stage in ("generate", "golden"):  # the compiled model; on a golden cache miss the HF model is
        return NOTHING  # built again there (after the compiled port ran, not beside the eager port)
    return None


class MemoryPlan:
    def __init__(self, session, items: list[tuple[str, str, dict]]):
        """``items``: (stage id, stage name, params) of the selected stage items in run order."""
        self.session = session
        self.ids = [sid for sid, _, _ in items]
        self.needs = [item_needs(stage, params, session) for _, stage, params in items]
        self.released: list[tuple[str, str]] = []  # (stage id, object) in release order, for tests

    def held(self) -> set[str]:
        return {name for name in RELEASABLE if name in self.session.__dict__}

    def needed_from(self, start: int, held: set[str], end: int | None = None) -> set[str]:
        """Every object the items from ``start`` (to ``end``) use, directly or to build one they use."""
        have, needed = set(held), set()

        def close(name):
            needed.add(name)
            if name not in have:
                have.add(name)
                for dep in BUILT_FROM.get(name, ()):
                    close(dep)

        for needs in self.needs[start:end]:
            if needs is None:
                return set(RELEASABLE)
            for name in sorted(needs):
                close(name)
        return needed

    def before(self, stage_id: str) -> None:
        """Build the eager port before the HF reference when the item needs both and neither is held,
        so that the checkpoint tensors it is made from are gone before the reference loads."""
        index = self._index(stage_id)
        if index is None or self.needs[index] is None:
            return
        held = self.held()
        needed = self.needed_from(index, held, index + 1)
        if "port" in held or "hf_model" in held or not {"port", "hf_model"} <= needed:
            return
        self.session.port  # noqa: B018
        self._release_unneeded(index, stage_id, after=False)

    def after(self, stage_id: str) -> None:
        index = self._index(stage_id)
        if index is not None:
            self._release_unneeded(index, stage_id, after=True)

    def _index(self, stage_id: str) -> int | None:
        try:
            return self.ids.index(stage_id)
        except ValueError:
            return None

    def _release_unneeded(self, index: int, stage_id: str, after: bool) -> None:
        start = index + 1 if after else index
        held = self.held()
        for source, copy in CAST_INTO.items():
            if source in held and copy not in held and self._cast_pays(source, copy, start, held):
                self._cast_in_place(source, copy, stage_id)
                held = self.held()
        needed = self.needed_from(start, held)
        dropped = [name for name in RELEASABLE if name in held and name not in needed]
        for name in dropped:
            self._drop(name, stage_id)
        if dropped:
            gc.collect()

    def _cast_pays(self, source: str, copy: str, start: int, held: set[str]) -> bool:
        """True when ``source`` is needed later only to make ``copy``."""
        if self.session.lp_dtype_name is None or (source == "port" and self._target_builds_copies):
            return False
        if source not in self.needed_from(start, held):
            return False  # not needed at all: plainly released
        needed = self.needed_from(start, held | {copy})
        return source not in needed and copy in needed

    @property
    def _target_builds_copies(self) -> bool:  # nxdi: its own low-precision build, not a cast
        return hasattr(self.session.target, "port_in_dtype")

    def _cast_in_place(self, source: str, copy: str, stage_id: str) -> None:
        model = self.session.__dict__.pop(source)
        if source == "port":
            self.session.__dict__.pop("mapping", None)  # it holds the same module
        self.session.__dict__[copy] = model.to(self.session.lp_dtype)
        self.released.append((stage_id, f"{source}->{copy}"))
        gc.collect()

    def _drop(self, name: str, stage_id: str) -> None:
        del self.session.__dict__[name]
        self.released.append((stage_id, name))


def cast_copy(module, dtype):
    """``copy.deepcopy(module).to(dtype)`` without an FP32 copy in between: each floating parameter and
    buffer is cast on its own, so the peak is the source plus the cast copy."""
    import copy

    import torch

    memo: dict = {}
    for tensor in [*module.parameters(), *module.buffers()]:
        if id(tensor) in memo or not tensor.is_floating_point():
            continue
        cast = tensor.detach().to(dtype)
        if isinstance(tensor, torch.nn.Parameter):
            cast = torch.nn.Parameter(cast, requires_grad=tensor.requires_grad)
        memo[id(tensor)] = cast
    return copy.deepcopy(module, memo).to(dtype)
