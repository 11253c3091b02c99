"""Names, records and small file helpers shared by the store, its inventory and the clean-cache command."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pytest_autoport.errors import AutoportError

MANIFEST = "manifest.json"
READY = "READY"
FAILURE_NOTE = "autoport_failure.txt"
# Written into every folder the store makes, the moment it makes it; removed last when the folder goes.
# A folder without it (or, for entries made before it existed, a manifest naming the folder) is not ours.
OWNER_MARKER = ".autoport-owned"
LOCKS_DIR = ".locks"
TMP_PREFIX = ".tmp-"
MANIFEST_FORMAT = 2
# the HF golden's cache (pytest_autoport.golden_cache), under the artifacts folder
GOLDEN_DIR = "golden"
GOLDEN_FAILURES_DIR = "golden_failures"
KEY_LENGTH = 16

DEFAULT_STALE_LOCK_AFTER = 6 * 3600.0

STATES = ("ready", "failed", "locked", "stale-lock", "empty", "corrupt", "foreign")
PURGEABLE = frozenset({"failed", "stale-lock", "empty", "corrupt"})
LOG_SUFFIXES = (".log", ".err")

ENTRY_RE = re.compile(rf"^(?P<name>.+)-(?P<key>[0-9a-f]{{{KEY_LENGTH}}})$")
FAILURE_RE = re.compile(r"^(?P<name>.+)_\d{8}-\d{6}(-\d+)?$")
TMP_RE = re.compile(
    rf"^\.tmp-(?P<name>.+)-(?P<key>[0-9a-f]{{{KEY_LENGTH}}})-(?P<pid>\d+)-(?P<rand>[A-Za-z0-9_]+)$"
)


class RebuildWarning(UserWarning):
    """Something the harness cached (compiled graphs, a manifest, a tiny checkpoint) was found corrupt and
    rebuilt, or a killed build's leftovers were removed: shown on the terminal, not only in the JSON."""


class CompileFailed(AutoportError):
    """A build raised. The message names the folder its logs and partial outputs were moved to."""

    def __init__(self, message: str, *, failure_dir: Path | None = None, name: str = "", key: str = ""):
        super().__init__(message)
        self.failure_dir = failure_dir
        self.name = name
        self.key = key


@dataclass
class Entry:
    """A ready artifact. ``built`` is True when this call compiled it; ``recovered_from`` names the problem
    of a corrupt entry this call purged and rebuilt (also in ``manifest["rebuilt_after"]``); ``cleaned``
    lists leftover temporary folders of killed builds of this key that this call removed."""

    name: str
    key: str
    path: Path
    manifest: dict
    built: bool
    recovered_from: str | None = None
    cleaned: tuple[str, ...] = ()


@dataclass
class EntryState:
    """One thing found on disk: an entry folder, a temporary build folder, a lock, a failure folder, or
    something the store did not make (``foreign``, never removed)."""

    path: Path
    name: str
    key: str
    state: str  # one of STATES
    detail: str = ""
    size_bytes: int = 0

    @property
    def purgeable(self) -> bool:
        return self.state in PURGEABLE

    def to_dict(self) -> dict:
        return {
            "path": str(self.path),
            "name": self.name,
            "key": self.key,
            "state": self.state,
            "detail": self.detail,
            "size_bytes": self.size_bytes,
        }


def _walk_files(folder: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for filename in sorted(filenames):
            yield Path(dirpath) / filename


def _tree_size(path: Path) -> int:
    try:
        if not path.is_dir() or path.is_symlink():
            return path.lstat().st_size
    except OSError:
        return 0
    total = 0
    for file in _walk_files(path):
        try:
            total += file.lstat().st_size
        except OSError:
            pass
    return total


def _age(path: Path) -> float:
    try:
        return max(0.0, time.time() - path.lstat().st_mtime)
    except OSError:
        return 0.0


def _format_age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _split_entry_name(folder_name: str) -> tuple[str, str]:
    match = ENTRY_RE.match(folder_name)
    return (match["name"], match["key"]) if match else (folder_name, "")


def _is_within(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def format_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover
