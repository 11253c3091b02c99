"""Classify and purge the Neuron persistent compile cache (DESIGN.md section 5).

The cache lives at ``NEURON_COMPILE_CACHE_URL`` when that is a local path (``s3://`` caches are reported as
unsupported and never touched), else ``/var/tmp/neuron-compile-cache``. Its layout is
``neuronxcc-<version>/MODULE_<hash>+<flags-hash>/`` holding ``model.neff``, a ``model.done`` marker,
``model.hlo_module.pb`` and ``model.log``. A cached *failed* compile (a log and no NEFF) makes later runs fail
without compiling, so failed, empty and stale entries are purged; nothing is purged while ``neuronx-cc`` runs.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from pytest_autoport.artifacts import (
    PURGEABLE,
    EntryState,
    _age,
    _flock_held,
    _format_age,
    _tree_size,
    _walk_files,
    format_size,
)
from pytest_autoport.errors import AutoportError

ENV_VAR = "NEURON_COMPILE_CACHE_URL"
DEFAULT_NEURON_CACHE = Path("/var/tmp/neuron-compile-cache")
VERSION_PREFIX = "neuronxcc-"
DONE_MARKERS = ("model.done",)
DEFAULT_STALE_LOCK_AFTER = 3600.0


class NeuronCacheUnsupported(AutoportError):
    """The configured Neuron compile cache is not a local folder (e.g. ``s3://``)."""


class CompilerRunning(AutoportError):
    """``neuronx-cc`` is running: purging now could remove an entry it is writing."""


def neuron_cache_dir() -> Path:
    """The local Neuron compile cache folder; raises :class:`NeuronCacheUnsupported` for a remote URL."""
    url = os.environ.get(ENV_VAR, "").strip()
    if not url:
        return DEFAULT_NEURON_CACHE
    if url.startswith("file://"):
        return Path(url[len("file://") :])
    if "://" in url:
        raise NeuronCacheUnsupported(
            f"{ENV_VAR}={url} is not a local path: classifying or purging a remote Neuron compile cache is "
            "unsupported, nothing was removed"
        )
    return Path(url).expanduser()


def compiler_pids() -> list[int]:
    """Pids of running ``neuronx-cc`` processes (found through /proc/*/cmdline)."""
    pids = []
    own = os.getpid()
    try:
        proc_entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in proc_entries:
        if not entry.isdigit() or int(entry) == own:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                raw = handle.read()
        except OSError:
            continue
        argv = [arg.decode("utf-8", "replace") for arg in raw.split(b"\0") if arg]
        if _is_compiler(argv):
            pids.append(int(entry))
    return pids


def _is_compiler(argv: list[str]) -> bool:
    # neuronx-cc is a Python console script: argv is [python, /path/neuronx-cc, ...] or [/path/neuronx-cc, ...]
    for arg in argv[:3]:
        if os.path.basename(arg).startswith("neuronx-cc"):
            return True
    return "-m" in argv[:3] and any(arg.startswith("neuronxcc") for arg in argv[:4])


def compiler_running() -> bool:
    return bool(compiler_pids())


def _resolve(path: Path | str | None) -> Path:
    return Path(path) if path is not None else neuron_cache_dir()


def classify_neuron_cache(
    path: Path | str | None = None, *, stale_lock_after: float = DEFAULT_STALE_LOCK_AFTER
) -> list[EntryState]:
    """One :class:`EntryState` per module folder under ``neuronxcc-*/``: ready (a NEFF and the done marker),
    failed (a log and no NEFF), empty, locked (a ``*.lock`` file; stale-lock when it is old, not held and no
    compiler runs) or corrupt (a NEFF without the done marker, or neither NEFF nor log)."""
    root = _resolve(path)
    if not root.is_dir():
        return []
    running: list[bool] = []  # computed once, only if a lock file is found

    def is_running() -> bool:
        if not running:
            running.append(compiler_running())
        return running[0]

    states = []
    for version_dir in sorted(root.iterdir()):
        if not version_dir.is_dir() or not version_dir.name.startswith(VERSION_PREFIX):
            continue
        for module_dir in sorted(version_dir.iterdir()):
            if module_dir.is_dir():
                states.append(_classify_module(module_dir, stale_lock_after, is_running))
    return states


def _classify_module(folder: Path, stale_lock_after: float, is_running) -> EntryState:
    name = f"{folder.parent.name}/{folder.name}"
    key = folder.name.removeprefix("MODULE_")
    files = list(_walk_files(folder))
    size = _tree_size(folder)

    def state(kind: str, detail: str) -> EntryState:
        return EntryState(folder, name, key, kind, detail, size)

    if not files:
        return state("empty", "no files")
    locks = [f for f in files if f.name.endswith(".lock")]
    if locks:
        age = min(_age(f) for f in locks)
        if any(_flock_held(f) for f in locks):
            return state("locked", f"{locks[0].name} held")
        if is_running():
            return state("locked", f"{locks[0].name} present, neuronx-cc running")
        if age > stale_lock_after:
            return state("stale-lock", f"{locks[0].name} left {_format_age(age)} ago, no compiler running")
        return state("locked", f"{locks[0].name} present ({_format_age(age)} old)")
    neffs = [f for f in files if f.suffix == ".neff"]
    done = any(f.name in DONE_MARKERS or f.suffix == ".done" for f in files)
    logs = [f for f in files if f.suffix == ".log"]
    if neffs and done:
        return state("ready", f"{neffs[0].name} {format_size(neffs[0].stat().st_size)}")
    if neffs:
        return state("corrupt", f"{neffs[0].name} without a done marker (interrupted write)")
    if logs:
        return state("failed", f"no NEFF; {_first_error(logs[0])}")
    return state("corrupt", f"no NEFF and no log ({len(files)} files)")


def _first_error(log: Path) -> str:
    try:
        with open(log, encoding="utf-8", errors="replace") as handle:
            lines = handle.read(1 << 20).splitlines()
    except OSError:
        return f"log {log.name}"
    for line in lines:
        if "ERROR" in line or "Error" in line:
            return line.strip()[:160]
    return f"log {log.name}"


def purge_neuron_cache(
    path: Path | str | None = None,
    dry_run: bool = False,
    *,
    states: list[EntryState] | None = None,
    stale_lock_after: float = DEFAULT_STALE_LOCK_AFTER,
) -> list[EntryState]:
    """Remove failed, stale-lock, empty and corrupt module folders; returns what was (or would be) removed.
    Raises :class:`CompilerRunning` (removing nothing) while ``neuronx-cc`` runs, unless ``dry_run``."""
    root = _resolve(path)
    if not dry_run and compiler_running():
        raise CompilerRunning(
            f"neuronx-cc is running: not purging the Neuron compile cache at {root} (an entry being written "
            "would look failed); rerun when no compile is in progress"
        )
    if states is None:
        states = classify_neuron_cache(root, stale_lock_after=stale_lock_after)
    candidates = [s for s in states if s.state in PURGEABLE]
    if dry_run:
        return candidates
    removed = []
    for candidate in candidates:
        if not candidate.path.is_dir():
            continue
        # re-check right before removing: a compile may have started since the scan
        if compiler_running():
            break
        again = _classify_module(candidate.path, stale_lock_after, compiler_running)
        if again.state not in PURGEABLE:
            continue
        try:
            shutil.rmtree(candidate.path)
        except OSError:
            continue
        removed.append(candidate)
    return removed


__all__ = [
    "CompilerRunning",
    "NeuronCacheUnsupported",
    "classify_neuron_cache",
    "compiler_running",
    "neuron_cache_dir",
    "purge_neuron_cache",
]
