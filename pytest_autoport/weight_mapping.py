"""Checks a port's HF -> port state-dict conversion: every HF tensor used, every port tensor filled."""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import StageFailure
from .weight_wiring import crossed_tensors, storage_id


class ReadTracker(dict):
    """A mutable copy of the HF state dict that remembers which keys the conversion read.

    Conversions may edit the dict they are given (NxDI's do: they pop, rename and add keys); the
    caller's dict is never touched. Reads are ``d[key]``, ``get``, ``pop`` and ``setdefault``."""

    def __init__(self, data: dict):
        super().__init__(data)
        self.read: set[str] = set()

    def __getitem__(self, key):
        value = super().__getitem__(key)
        self.read.add(key)
        return value

    def get(self, key, default=None):
        if key in self:
            self.read.add(key)
        return super().get(key, default)

    def pop(self, key, *default):
        if key in self:
            self.read.add(key)
        return super().pop(key, *default)

    def setdefault(self, key, default=None):
        if key in self:
            self.read.add(key)
        return super().setdefault(key, default)


@dataclass
class MappingReport:
    converted: dict
    unused_hf: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)  # "key: port [a, b] vs converted [c, d]"
    kept_buffers: list[str] = field(default_factory=list)  # port buffers left as the port built them
    crossed: list[str] = field(default_factory=list)  # see weight_wiring.crossed_tensors

    @property
    def ok(self) -> bool:
        return not (self.unused_hf or self.missing or self.unexpected or self.mismatched)

    def figures(self, hf_count: int, port_count: int) -> dict:
        return {
            "hf_tensors": hf_count,
            "port_tensors": port_count,
            "unused_hf": len(self.unused_hf),
            "missing": len(self.missing),
            "unexpected": len(self.unexpected),
            "shape_mismatches": len(self.mismatched),
            **({"kept_buffers": self.kept_buffers} if self.kept_buffers else {}),
            **({"crossed_tensors": self.crossed} if self.crossed else {}),
        }

    def message(self) -> str:
        parts = []
        for title, keys in (
            ("HF tensors the conversion never used", self.unused_hf),
            ("port tensors the conversion did not fill", self.missing),
            ("converted keys the port does not have", self.unexpected),
            ("shape mismatches", self.mismatched),
        ):
            if keys:
                shown = "\n    ".join(keys[:12]) + (
                    f"\n    ... and {len(keys) - 12} more" if len(keys) > 12 else ""
                )
                parts.append(f"{title} ({len(keys)}):\n    {shown}")
        return "weight mapping is wrong:\n  " + "\n  ".join(parts)


def check_mapping(
    convert, hf_state: dict, config, port_state: dict, buffers: frozenset[str] = frozenset()
) -> MappingReport:
    """Run ``convert(hf_state, config)`` and check its output against the port's own state dict.

    An HF tensor counts as used when a converted tensor shares its storage (a rename or a view).
    Conversions that compute new tensors (fusing, transposing) are credited with every key they read.
    A port buffer in ``buffers`` (persistent: RoPE tables the port computes) that the conversion does
    not fill keeps the value the port built it with (``kept_buffers``, also in ``converted``).
    """
    tracker = ReadTracker(hf_state)
    try:
        converted = convert(tracker, config)
    except KeyError as exc:
        raise StageFailure(
            f"convert_hf_to_neuron_state_dict looked up a key the checkpoint lacks: {exc}"
        ) from None
    report = MappingReport(converted=dict(converted))

    hf_storages = {storage_id(t): key for key, t in hf_state.items()}
    shared = {storage_id(t) for t in report.converted.values()}
    derived = any(sid not in hf_storages for sid in shared)
    for key, tensor in hf_state.items():
        used = storage_id(tensor) in shared or (derived and key in tracker.read)
        if not used:
            report.unused_hf.append(key)

    for key, target in port_state.items():
        if key not in report.converted and key in buffers:
            report.kept_buffers.append(key)
        elif key not in report.converted:
            report.missing.append(key)
        elif tuple(report.converted[key].shape) != tuple(target.shape):
            report.mismatched.append(
                f"{key}: port {list(target.shape)} vs converted {list(report.converted[key].shape)}"
            )
    report.unexpected = [key for key in report.converted if key not in port_state]
    report.crossed = crossed_tensors(report.converted, hf_state)
    report.converted.update((key, port_state[key]) for key in report.kept_buffers)
    return report
