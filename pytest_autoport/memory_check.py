"""Will the next big step fit? The FP32 HF reference, the checkpoint read with the FP32 port, a
low-precision copy and a compilation are estimated before they start, so a run too big for the machine
says so with the figures and what to do instead of being killed by the kernel halfway through.

Estimate: parameters (counted from the safetensors headers, no tensor read) x 4 bytes, plus 10% and
256 MiB for activations and loading. Available: psutil's figure where installed, else MemAvailable in
/proc/meminfo, lowered to the cgroup's remaining limit when there is one. ``AUTOPORT_AVAILABLE_MEMORY``
(bytes, or with a K/M/G/T suffix) replaces the measured figure.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from .errors import AutoportError

AVAILABLE_ENV = "AUTOPORT_AVAILABLE_MEMORY"
FP32_BYTES = 4
MARGIN_FRACTION = 0.10
MARGIN_BYTES = 256 << 20
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class MemoryTooSmall(AutoportError):
    """A step would not fit in the memory available; it was not started."""


class ReferenceTooLarge(MemoryTooSmall):
    """The FP32 reference would not fit in the memory available; it was not loaded."""


SMALLER_RUN = (
    "--autoport-layers=N judges the first N decoder layers of the checkpoint, fewer or smaller buckets "
    "(port.context_buckets, port.token_generation_buckets) shorten the compilation, or use a machine with "
    f"more memory; {AVAILABLE_ENV} overrides the available figure"
)
COPY_MARGIN_BYTES = 64 << 20  # steps without activations: a smaller margin than the reference's


def parse_size(text: str) -> int:
    """``"512M"``, ``"2G"``, ``"1.5GiB"``, ``"1048576"`` -> bytes."""
    raw = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = raw[-1:] if raw[-1:] in _UNITS and raw[-1:] else ""
    try:
        value = float(raw[: len(raw) - len(unit)] if unit else raw)
    except ValueError:
        raise AutoportError(
            f"{AVAILABLE_ENV}={text!r}: expected bytes or a size such as 512M or 16G"
        ) from None
    return int(value * _UNITS[unit])


def parameter_count(weights_dir: Path, leave_out=None) -> int:
    """Elements of every tensor in the checkpoint's safetensors files, read from their headers;
    ``leave_out(names)``: the names not loaded (the later layers in reduced-layer mode)."""
    return checkpoint_size(weights_dir, leave_out)[0]


def checkpoint_size(weights_dir: Path, leave_out=None) -> tuple[int, int]:
    """(elements, bytes as stored) of the checkpoint's tensors, from the safetensors headers."""
    total = stored = 0
    for file in sorted(Path(weights_dir).glob("*.safetensors")):
        with open(file, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        skipped = set(leave_out(list(header))) if leave_out else set()
        for name, info in header.items():
            if name != "__metadata__" and name not in skipped:
                count = 1
                for dim in info["shape"]:
                    count *= dim
                total += count
                stored += info["data_offsets"][1] - info["data_offsets"][0]
    return total, stored


def reference_estimate(parameters: int) -> dict:
    weights = parameters * FP32_BYTES
    margin = int(weights * MARGIN_FRACTION) + MARGIN_BYTES
    return {
        "parameters": parameters,
        "weights_bytes": weights,
        "margin_bytes": margin,
        "bytes": weights + margin,
    }


def available_memory() -> tuple[int | None, str]:
    """(bytes available to this process, where the figure comes from); (None, why) when unknown."""
    forced = os.environ.get(AVAILABLE_ENV)
    if forced:
        return parse_size(forced), f"{AVAILABLE_ENV}={forced}"
    found: list[tuple[int, str]] = []
    try:
        import psutil

        found.append((int(psutil.virtual_memory().available), "psutil available memory"))
    except ImportError:
        meminfo = _meminfo_available()
        if meminfo is not None:
            found.append((meminfo, "MemAvailable in /proc/meminfo"))
    cgroup = _cgroup_remaining()
    if cgroup is not None:
        found.append(cgroup)
    if not found:
        return None, "no memory figure on this system"
    return min(found)


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_remaining() -> tuple[int, str] | None:
    """The cgroup's limit minus its usage (v2, then v1), or None without a limit."""
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            limit_text = Path(limit_file).read_text().strip()
            if limit_text == "max":
                continue
            limit, usage = int(limit_text), int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit >= 1 << 60:  # cgroup v1 writes "no limit" as a huge number
            continue
        return max(0, limit - usage), f"cgroup limit {_gib(limit)} less {_gib(usage)} in use ({limit_file})"
    return None


def _gib(size: int) -> str:
    return f"{size / (1 << 30):.2f} GiB"


def check_reference_fits(weights_dir: Path, leave_out=None) -> dict:
    """Figures of the estimate; raises :class:`ReferenceTooLarge` when the reference will not fit.
    ``leave_out``: as for :func:`parameter_count`."""
    estimate = reference_estimate(parameter_count(weights_dir, leave_out))
    available, source = available_memory()
    figures = {**estimate, "available_bytes": available, "available_from": source}
    if available is None or estimate["bytes"] <= available:
        return figures
    raise ReferenceTooLarge(
        f"the FP32 HF reference of {weights_dir} will not fit in memory, so it was not loaded: it needs about "
        f"{_gib(estimate['bytes'])} ({estimate['parameters']:,} parameters x {FP32_BYTES} bytes = "
        f"{_gib(estimate['weights_bytes'])}, plus {_gib(estimate['margin_bytes'])} for activations and "
        f"loading) and {_gib(available)} is available ({source}). For the golden, "
        "--autoport-golden-streaming holds one decoder layer at a time, and a golden cache built elsewhere "
        "(copied into agent_artifacts/golden/) needs no HF model; the component and model stages need the "
        "whole reference: --autoport-layers=N judges the first N decoder layers, or use a machine with more "
        f"memory; {AVAILABLE_ENV} overrides the available figure"
    )


def check_fits(what: str, needed: int, detail: str, advice: str = SMALLER_RUN) -> dict:
    """Figures of the estimate; raises :class:`MemoryTooSmall` naming ``what`` when ``needed`` bytes
    are more than the memory available. ``detail``: how ``needed`` was counted."""
    available, source = available_memory()
    figures = {"bytes": needed, "available_bytes": available, "available_from": source}
    if available is None or needed <= available:
        return figures
    raise MemoryTooSmall(
        f"{what} will not fit in memory, so it was not started: it needs about {_gib(needed)} ({detail}) "
        f"and {_gib(available)} is available ({source}), beside what this run already holds. {advice}"
    )


def check_checkpoint_read_fits(weights_dir: Path, leave_out=None) -> dict:
    """The checkpoint's tensors read whole, beside the FP32 port they convert into."""
    parameters, stored = checkpoint_size(weights_dir, leave_out)
    port = parameters * FP32_BYTES
    margin = int((stored + port) * MARGIN_FRACTION) + COPY_MARGIN_BYTES
    return check_fits(
        f"reading the checkpoint {weights_dir} into the FP32 port",
        stored + port + margin,
        f"{_gib(stored)} of tensors as stored + {_gib(port)} for the FP32 port ({parameters:,} parameters) "
        f"+ {_gib(margin)} margin",
    )


def module_bytes(module, dtype=None) -> int:
    """Bytes of ``module``'s parameters and buffers (each storage once), its floating ones in ``dtype``
    when given."""
    seen, total = set(), 0
    for tensor in [*module.parameters(), *module.buffers()]:
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key in seen or tensor.device.type == "meta":
            continue
        seen.add(key)
        size = dtype.itemsize if dtype is not None and tensor.is_floating_point() else tensor.element_size()
        total += tensor.numel() * size
    return total


def check_copy_fits(what: str, module, dtype) -> dict:
    """A cast copy of ``module`` in ``dtype`` (the source stays held)."""
    size = module_bytes(module, dtype)
    margin = int(size * MARGIN_FRACTION) + COPY_MARGIN_BYTES
    return check_fits(what, size + margin, f"{_gib(size)} of tensors + {_gib(margin)} margin")


def check_compile_fits(module) -> dict:
    """Tracing and saving the port's graphs beside the port (its weights are written, not copied)."""
    size = module_bytes(module)
    margin = int(size * MARGIN_FRACTION) + COPY_MARGIN_BYTES
    return check_fits(
        "the compilation", margin, f"tracing and saving the graphs of a port of {_gib(size)}: 10% + 64 MiB"
    )
