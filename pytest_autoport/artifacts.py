"""Content-addressed, atomic, self-cleaning store for compiled models (DESIGN.md section 5).

An entry lives in ``root/{name}-{key}`` where ``key`` hashes everything that changes the artifact. It is built
in a temporary folder under a per-key file lock, checksummed into ``manifest.json``, marked ``READY`` and
renamed into place, so a reader never sees half an entry and a failed build never leaves one. A failed build's
folder (logs, graph dumps) moves to ``failures_root``. :meth:`ArtifactStore.entries` classifies what is on
disk and :meth:`ArtifactStore.purge` removes failed, stale-lock, empty and corrupt entries.

Also the ``autoport clean-cache`` subcommand (:func:`add_arguments`, :func:`run`). No torch here: the CLI
imports this module and must stay instant; filelock is imported only when a lock is taken.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import enum
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

from pytest_autoport.errors import AutoportError

try:  # pragma: no cover - fcntl exists everywhere this harness runs (Linux)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

MANIFEST = "manifest.json"
READY = "READY"
FAILURE_NOTE = "autoport_failure.txt"
LOCKS_DIR = ".locks"
TMP_PREFIX = ".tmp-"
MANIFEST_FORMAT = 1
KEY_LENGTH = 16

DEFAULT_ROOT = Path("agent_artifacts/data/compiled_model")
DEFAULT_FAILURES_ROOT = Path("agent_artifacts/data/compilation_failures")
DEFAULT_STALE_LOCK_AFTER = 6 * 3600.0

STATES = ("ready", "failed", "locked", "stale-lock", "empty", "corrupt")
PURGEABLE = frozenset({"failed", "stale-lock", "empty", "corrupt"})
LOG_SUFFIXES = (".log", ".err")

_NAME_RE = re.compile(r"^[A-Za-z0-9_+][A-Za-z0-9._+-]*$")
_ENTRY_RE = re.compile(rf"^(?P<name>.+)-(?P<key>[0-9a-f]{{{KEY_LENGTH}}})$")
_TMP_RE = re.compile(
    rf"^\.tmp-(?P<name>.+)-(?P<key>[0-9a-f]{{{KEY_LENGTH}}})-(?P<pid>\d+)-(?P<rand>[A-Za-z0-9_]+)$"
)
_HASH_CHUNK = 1 << 20


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
    of a corrupt entry this call purged and rebuilt (also in ``manifest["rebuilt_after"]``)."""

    name: str
    key: str
    path: Path
    manifest: dict
    built: bool
    recovered_from: str | None = None


@dataclass
class EntryState:
    """One thing found on disk: an entry folder, a temporary build folder, a lock or a failure folder."""

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


# --------------------------------------------------------------------------------------------------- keys


def _json_default(obj: Any) -> Any:
    if isinstance(obj, PurePath):
        return obj.as_posix()
    if isinstance(obj, (set, frozenset)):
        return sorted(_canonical_json(item) for item in obj)
    if isinstance(obj, (bytes, bytearray)):
        return obj.hex()
    if isinstance(obj, enum.Enum):
        return obj.value
    text = str(obj)
    if " at 0x" in text:  # an address would make the key differ on every run
        raise TypeError(f"artifact key inputs must be JSON-like; cannot hash {type(obj).__name__}: {text}")
    return text  # e.g. torch.float16 -> "torch.float16"


def _canonical_json(inputs: Any) -> str:
    return json.dumps(
        inputs, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json_default
    )


def artifact_key(inputs: dict) -> str:
    """sha256 of the canonical JSON of ``inputs`` (sorted keys), first 16 hex characters."""
    if not isinstance(inputs, Mapping):
        raise TypeError(f"artifact key inputs must be a dict, got {type(inputs).__name__}")
    return hashlib.sha256(_canonical_json(dict(inputs)).encode("utf-8")).hexdigest()[:KEY_LENGTH]


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(
            f"artifact name {name!r} must be non-empty, start with a letter, digit, '_' or '+', "
            "and hold only letters, digits, '.', '_', '+' and '-'"
        )


# --------------------------------------------------------------------------------------------------- files


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


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


def _hash_tree(folder: Path) -> dict[str, dict]:
    files: dict[str, dict] = {}
    for file in _walk_files(folder):
        rel = file.relative_to(folder).as_posix()
        if rel in (MANIFEST, READY):
            continue
        files[rel] = {"sha256": _sha256(file), "size": file.stat().st_size}
    return files


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_file_synced(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _remove_tree(path: Path) -> None:
    """Remove an entry: READY first, so an interrupted removal leaves something classified as not ready."""
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
        return
    (path / READY).unlink(missing_ok=True)
    shutil.rmtree(path)


def _read_manifest(folder: Path) -> tuple[dict | None, str | None]:
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        return None, f"{MANIFEST} missing"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"unreadable {MANIFEST}: {exc}"
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        return None, f"{MANIFEST} has no file list"
    return manifest, None


def verify_entry(
    folder: Path, name: str | None = None, key: str | None = None
) -> tuple[str | None, dict | None]:
    """Check a ready entry: READY marker, readable manifest naming this entry, every listed file present with
    the listed size and sha256. Returns ``(problem, manifest)``; ``problem`` is None when the entry is sound."""
    folder = Path(folder)
    if not folder.is_dir():
        return "not a folder", None
    if not (folder / READY).is_file():
        return "no READY marker (incomplete)", None
    manifest, problem = _read_manifest(folder)
    if manifest is None:
        if problem == f"{MANIFEST} missing":
            problem = f"READY marker without {MANIFEST}"
        return problem, None
    if name is not None and key is not None and (manifest.get("name"), manifest.get("key")) != (name, key):
        return (
            f"{MANIFEST} describes {manifest.get('name')}-{manifest.get('key')}, folder is {name}-{key}",
            manifest,
        )
    listed: list[tuple[str, Path, dict]] = []
    for rel, info in manifest["files"].items():
        parts = PurePath(rel).parts
        if PurePath(rel).is_absolute() or ".." in parts or not isinstance(info, dict):
            return f"{MANIFEST} lists an invalid file entry {rel!r}", manifest
        listed.append((rel, folder / rel, info))
    for rel, path, info in listed:  # sizes first: cheap, and catch truncation before hashing gigabytes
        if not path.is_file():
            return f"missing file {rel}", manifest
        size = path.stat().st_size
        if size != info.get("size"):
            return f"size mismatch for {rel}: {size} bytes, manifest says {info.get('size')}", manifest
    for rel, path, info in listed:
        if _sha256(path) != info.get("sha256"):
            return f"checksum mismatch for {rel}", manifest
    return None, manifest


# --------------------------------------------------------------------------------------------------- processes


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (index 0 is the state), or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()


def _proc_start(pid: int) -> str | None:
    fields = _proc_stat(pid)
    return fields[19] if fields and len(fields) > 19 else None


def _pid_alive(pid: int | None, host: str | None = None, proc_start: str | None = None) -> bool | None:
    """True / False, or None when it cannot be told (the pid belongs to another host)."""
    if pid is None:
        return None
    if host and host != socket.gethostname():
        return None
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    except OSError:
        return None
    fields = _proc_stat(pid)
    if fields is not None:
        if fields[0] in ("Z", "X"):  # zombie: dead, not yet reaped
            return False
        if proc_start is not None and len(fields) > 19 and fields[19] != proc_start:
            return False  # the pid was reused by another process
    return True


def _flock_held(path: Path) -> bool | None:
    """Whether another open file holds an flock on ``path`` (filelock's Unix lock). Never creates the file.
    None when it cannot be told."""
    if fcntl is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        return False
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return None
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


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


def _read_owner(sidecar: Path) -> dict | None:
    """The lock holder recorded next to a lock: JSON ``{"pid", "host", "proc_start", "since"}`` or a bare pid."""
    try:
        text = sidecar.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    if not text:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None
    if isinstance(data, int):
        return {"pid": data}
    if isinstance(data, dict) and isinstance(data.get("pid"), int):
        return data
    return None


def _split_entry_name(folder_name: str) -> tuple[str, str]:
    match = _ENTRY_RE.match(folder_name)
    return (match["name"], match["key"]) if match else (folder_name, "")


# --------------------------------------------------------------------------------------------------- store


class ArtifactStore:
    """Compiled artifacts under ``root``, failed builds under ``failures_root``."""

    def __init__(
        self,
        root: Path,
        failures_root: Path,
        *,
        lock_timeout: float = 3600,
        stale_lock_after: float = DEFAULT_STALE_LOCK_AFTER,
    ):
        self.root = Path(root)
        self.failures_root = Path(failures_root)
        self.lock_timeout = lock_timeout
        self.stale_lock_after = stale_lock_after
        self.purge_errors: list[tuple[Path, str]] = []

    # paths
    def entry_path(self, name: str, key: str) -> Path:
        return self.root / f"{name}-{key}"

    def lock_path(self, name: str, key: str) -> Path:
        return self.root / LOCKS_DIR / f"{name}-{key}.lock"

    def _owner_path(self, lock_path: Path) -> Path:
        return lock_path.with_suffix(".pid")

    # building
    def get_or_build(self, name: str, key_inputs: dict, build: Callable[[Path], dict]) -> Entry:
        """Return the entry for ``key_inputs``, building it with ``build(tmp_dir) -> dict`` if it is not on disk
        (or is corrupt: then it is purged and rebuilt once). Raises :class:`CompileFailed` when ``build`` raises."""
        _check_name(name)
        key = artifact_key(key_inputs)
        final = self.entry_path(name, key)
        with self._hold_lock(name, key):
            recovered_from = None
            if os.path.lexists(final):
                problem, manifest = verify_entry(final, name, key)
                if problem is None and manifest is not None:
                    return Entry(name, key, final, manifest, built=False)
                recovered_from = problem or "unreadable entry"
                _remove_tree(final)
            return self._build(name, key, key_inputs, build, recovered_from)

    @contextmanager
    def _hold_lock(self, name: str, key: str) -> Iterator[None]:
        from filelock import FileLock, Timeout

        lock_path = self.lock_path(name, key)
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        owner_path = self._owner_path(lock_path)
        lock = FileLock(str(lock_path), timeout=self.lock_timeout)
        try:
            lock.acquire()
        except Timeout as exc:
            owner = _read_owner(owner_path) or {}
            holder = (
                f"pid {owner['pid']} on {owner.get('host', '?')}" if "pid" in owner else "an unknown process"
            )
            raise AutoportError(
                f"timed out after {self.lock_timeout:g} s waiting for {lock_path} (held by {holder}); "
                "if no compile is running, run `autoport clean-cache`"
            ) from exc
        try:
            pid = os.getpid()
            owner = {
                "pid": pid,
                "host": socket.gethostname(),
                "proc_start": _proc_start(pid),
                "since": time.time(),
            }
            staging = owner_path.with_name(f"{owner_path.name}.{pid}.tmp")
            staging.write_text(json.dumps(owner), encoding="utf-8")
            os.replace(staging, owner_path)
            yield
        finally:
            try:
                owner_path.unlink(missing_ok=True)
            finally:
                lock.release()

    def _build(
        self, name: str, key: str, key_inputs: dict, build: Callable[[Path], dict], recovered_from: str | None
    ) -> Entry:
        final = self.entry_path(name, key)
        tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{name}-{key}-{os.getpid()}-", dir=self.root))
        started = time.monotonic()
        try:
            result = build(tmp)
            if result is None:
                result = {}
            if not isinstance(result, Mapping):
                raise TypeError(f"build returned {type(result).__name__}; it must return a dict (or None)")
            seconds = time.monotonic() - started
            manifest: dict[str, Any] = {
                "format": MANIFEST_FORMAT,
                "name": name,
                "key": key,
                "key_inputs": json.loads(json.dumps(dict(key_inputs), default=_json_default)),
                "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "build_seconds": round(seconds, 3),
                "build": json.loads(json.dumps(dict(result), default=str)),
                "files": _hash_tree(tmp),
            }
            if recovered_from is not None:
                manifest["rebuilt_after"] = recovered_from
            _write_file_synced(tmp / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            _write_file_synced(tmp / READY, "")  # written last: READY means complete
            _fsync_dir(tmp)
        except Exception as exc:
            failure_dir, move_problem = self._keep_failure(tmp, name, key, key_inputs, exc)
            where = (
                f"logs and partial outputs are in {failure_dir}"
                if failure_dir is not None
                else f"could not keep its folder ({move_problem})"
            )
            raise CompileFailed(
                f"building {name}-{key} failed: {type(exc).__name__}: {exc}; {where}",
                failure_dir=failure_dir,
                name=name,
                key=key,
            ) from exc
        except BaseException:  # interrupted (Ctrl-C, SystemExit): nothing worth keeping
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        try:
            os.rename(tmp, final)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):  # someone bypassed the lock and won the race
                problem, existing = verify_entry(final, name, key)
                if problem is None and existing is not None:
                    return Entry(name, key, final, existing, built=False)
            raise
        _fsync_dir(self.root)
        return Entry(name, key, final, manifest, built=True, recovered_from=recovered_from)

    def _keep_failure(
        self, tmp: Path, name: str, key: str, key_inputs: dict, exc: BaseException
    ) -> tuple[Path | None, str]:
        """Move a failed build's temporary folder under failures_root with a note on what failed."""
        try:
            tmp.mkdir(parents=True, exist_ok=True)  # the build may have removed it
            note = [
                f"artifact: {name}-{key}",
                f"failed at: {_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')}",
                f"host: {socket.gethostname()}  pid: {os.getpid()}",
                f"error: {type(exc).__name__}: {exc}",
                "key inputs:",
                json.dumps(dict(key_inputs), indent=2, sort_keys=True, default=str),
                "",
                "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
            ]
            (tmp / FAILURE_NOTE).write_text("\n".join(note), encoding="utf-8")
        except OSError:
            pass
        try:
            self.failures_root.mkdir(parents=True, exist_ok=True)
            stamp = time.strftime("%Y%m%d-%H%M%S")
            for attempt in range(1000):
                dest = self.failures_root / (f"{name}_{stamp}" + (f"-{attempt}" if attempt else ""))
                try:
                    dest.mkdir()
                    break
                except FileExistsError:
                    continue
            else:  # pragma: no cover
                raise OSError(f"no free failure folder name under {self.failures_root}")
            try:
                os.rename(tmp, dest)  # replaces the empty dest atomically on one filesystem
            except OSError as exc_move:
                if exc_move.errno != errno.EXDEV:
                    raise
                shutil.copytree(tmp, dest, symlinks=True, dirs_exist_ok=True)
                shutil.rmtree(tmp, ignore_errors=True)
            return dest, ""
        except OSError as move_exc:
            return None, f"{type(move_exc).__name__}: {move_exc}; the temporary folder {tmp} is left in place"

    # classification
    def entries(self) -> list[EntryState]:
        """Classify everything under root (entries, temporary build folders, locks) and failures_root."""
        states: list[EntryState] = []
        if self.root.is_dir():
            for child in sorted(self.root.iterdir()):
                if child.name == LOCKS_DIR:
                    continue
                if child.name.startswith(TMP_PREFIX):
                    states.append(self._classify_tmp(child))
                elif not child.name.startswith(".") and child.is_dir():
                    states.append(self._classify_entry(child))
            states.extend(self._classify_locks())
        if self.failures_root.is_dir():
            for child in sorted(self.failures_root.iterdir()):
                states.append(self._classify_failure(child))
        return states

    def _classify_entry(self, folder: Path) -> EntryState:
        name, key = _split_entry_name(folder.name)
        size = _tree_size(folder)
        files = [p.relative_to(folder).as_posix() for p in _walk_files(folder)]

        def state(kind: str, detail: str) -> EntryState:
            return EntryState(folder, name, key, kind, detail, size)

        if not files:
            return state("empty", "no files")
        if not (folder / READY).is_file():
            logs = [f for f in files if f.endswith(LOG_SUFFIXES) or Path(f).name == FAILURE_NOTE]
            if logs:
                return state("failed", f"no {READY} marker; failure log {logs[0]}")
            return state("corrupt", f"no {READY} marker (incomplete build, {len(files)} files)")
        problem, manifest = verify_entry(folder, name if key else None, key or None)
        if problem is not None or manifest is None:
            return state("corrupt", problem or "unreadable entry")
        listed = len(manifest.get("files", {}))
        return state(
            "ready", f"{listed} file{'' if listed == 1 else 's'}, built {manifest.get('created_at', '?')}"
        )

    def _classify_tmp(self, folder: Path) -> EntryState:
        match = _TMP_RE.match(folder.name)
        name, key = (match["name"], match["key"]) if match else (folder.name, "")
        size = _tree_size(folder)
        age = _age(folder)
        if match is None:
            kind = "stale-lock" if age > self.stale_lock_after else "locked"
            return EntryState(
                folder, name, key, kind, f"temporary folder, untouched for {_format_age(age)}", size
            )
        pid = int(match["pid"])
        alive = _pid_alive(pid)
        if alive is False:
            return EntryState(
                folder,
                name,
                key,
                "stale-lock",
                f"leftover temporary folder of a killed build (pid {pid} is gone)",
                size,
            )
        held = _flock_held(self.lock_path(name, key))
        if alive and (held or age <= self.stale_lock_after):
            return EntryState(folder, name, key, "locked", f"build in progress (pid {pid})", size)
        return EntryState(
            folder,
            name,
            key,
            "stale-lock",
            f"temporary folder untouched for {_format_age(age)}, pid {pid} not holding the lock",
            size,
        )

    def _classify_locks(self) -> list[EntryState]:
        locks_dir = self.root / LOCKS_DIR
        if not locks_dir.is_dir():
            return []
        states = []
        seen: set[str] = set()
        for path in sorted(locks_dir.iterdir()):
            if path.suffix not in (".lock", ".pid") or path.stem in seen:
                continue
            seen.add(path.stem)
            state = self._classify_lock(locks_dir / f"{path.stem}.lock")
            if state is not None:
                states.append(state)
        return states

    def _classify_lock(self, lock_path: Path) -> EntryState | None:
        name, key = _split_entry_name(lock_path.stem)
        owner_path = self._owner_path(lock_path)
        owner = _read_owner(owner_path)
        held = _flock_held(lock_path)
        age = _age(owner_path if owner_path.exists() else lock_path)
        who = f"pid {owner['pid']}" + (f" on {owner['host']}" if owner.get("host") else "") if owner else "?"
        if held:
            detail = f"held by {who}" if owner else "held"
            return EntryState(lock_path, name, key, "locked", f"{detail} for {_format_age(age)}", 0)
        if owner is None:
            if owner_path.exists():  # unreadable holder record without a holder
                return EntryState(
                    lock_path, name, key, "stale-lock", "unreadable holder record, lock not held", 0
                )
            return None  # an idle lock file: nothing to report
        alive = _pid_alive(owner["pid"], owner.get("host"), owner.get("proc_start"))
        if alive is False:
            return EntryState(lock_path, name, key, "stale-lock", f"holder {who} is gone", 0)
        if age > self.stale_lock_after:
            return EntryState(
                lock_path,
                name,
                key,
                "stale-lock",
                f"recorded holder {who}, not held for {_format_age(age)}",
                0,
            )
        return EntryState(lock_path, name, key, "locked", f"recorded holder {who} is alive", 0)

    def _classify_failure(self, path: Path) -> EntryState:
        name = path.name.rsplit("_", 1)[0] if "_" in path.name else path.name
        note = path / FAILURE_NOTE
        detail = "kept failed build"
        if note.is_file():
            try:
                for line in note.read_text(encoding="utf-8", errors="replace").splitlines():
                    if line.startswith("error: "):
                        detail = line[len("error: ") :][:160]
                        break
            except OSError:
                pass
        return EntryState(path, name, "", "failed", detail, _tree_size(path))

    # purging
    def purge(self, *, dry_run: bool = False, states: list[EntryState] | None = None) -> list[EntryState]:
        """Remove failed, stale-lock, empty and corrupt entries and leftover temporary folders; never ready
        entries or live locks. Each is re-checked (under its lock where it has one) right before removal.
        ``dry_run`` removes nothing. Returns what was (or would be) removed; failures land in purge_errors."""
        self.purge_errors = []
        candidates = [s for s in (self.entries() if states is None else states) if s.state in PURGEABLE]
        if dry_run:
            return candidates
        removed = []
        for state in candidates:
            try:
                if self._remove(state):
                    removed.append(state)
            except OSError as exc:
                self.purge_errors.append((state.path, f"{type(exc).__name__}: {exc}"))
        return removed

    def _remove(self, state: EntryState) -> bool:
        path = state.path
        if not os.path.lexists(path):
            return False
        if _is_within(path, self.failures_root):
            _remove_tree(path)
            return True
        if path.parent == self.root / LOCKS_DIR:
            return self._remove_lock(path)
        if path.name.startswith(TMP_PREFIX):
            if self._classify_tmp(path).state not in PURGEABLE:
                return False
            shutil.rmtree(path)
            return True
        if not state.key:  # a folder named outside the store's scheme: no lock to take
            if self._classify_entry(path).state not in PURGEABLE:
                return False
            _remove_tree(path)
            return True
        with self._try_lock(state.name, state.key) as acquired:
            if not acquired or self._classify_entry(path).state not in PURGEABLE:
                return False
            _remove_tree(path)
            return True

    def _remove_lock(self, lock_path: Path) -> bool:
        name, key = _split_entry_name(lock_path.stem)
        current = self._classify_lock(lock_path)
        if current is None or current.state not in PURGEABLE:
            return False
        with self._try_lock(name, key, lock_path=lock_path) as acquired:
            if not acquired:
                return False
            self._owner_path(lock_path).unlink(missing_ok=True)
            lock_path.unlink(missing_ok=True)
            return True

    @contextmanager
    def _try_lock(self, name: str, key: str, lock_path: Path | None = None) -> Iterator[bool]:
        """Take an entry's lock without waiting; yields whether it was taken."""
        from filelock import FileLock, Timeout

        lock_path = lock_path or self.lock_path(name, key)
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(lock_path), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            yield False
            return
        try:
            yield True
        finally:
            lock.release()


def _is_within(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true", help="list what would be removed; remove nothing")
    parser.add_argument(
        "--root", type=Path, default=DEFAULT_ROOT, help=f"compiled-artifact store (default: {DEFAULT_ROOT})"
    )
    parser.add_argument(
        "--failures-root",
        type=Path,
        default=DEFAULT_FAILURES_ROOT,
        help=f"where failed builds are kept (default: {DEFAULT_FAILURES_ROOT})",
    )
    parser.add_argument(
        "--neuron-cache",
        action="store_true",
        help="also classify and purge the Neuron compile cache (NEURON_COMPILE_CACHE_URL, else /var/tmp/neuron-compile-cache)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def format_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover


def _label(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return str(path)


def _table(rows: list[tuple[str, str, str, str]]) -> str:
    header = ("STATE", "ENTRY", "SIZE", "DETAIL")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    lines = []
    for row in [header, *rows]:
        lines.append(
            f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}  {row[3]}".rstrip()
        )
    return "\n".join(lines)


def _section(
    title: str, base: Path, states: list[EntryState], removed: list[EntryState], dry_run: bool
) -> list[str]:
    removed_paths = {s.path for s in removed}
    mark = "[would remove] " if dry_run else "[removed] "
    rows = [
        (
            s.state,
            _label(s.path, base),
            format_size(s.size_bytes),
            (mark if s.path in removed_paths else "") + s.detail,
        )
        for s in states
    ]
    lines = [f"{title}: {base}"]
    lines.append(_table(rows) if rows else "  (nothing)")
    return lines


def _summary(states: list[EntryState], removed: list[EntryState], dry_run: bool) -> str:
    counts = {kind: sum(s.state == kind for s in states) for kind in STATES}
    parts = ", ".join(f"{n} {kind}" for kind, n in counts.items() if n) or "nothing found"
    freed = format_size(sum(s.size_bytes for s in removed))
    if dry_run:
        action = f"would remove {len(removed)} ({freed}); dry run, nothing removed"
    else:
        action = f"removed {len(removed)} ({freed} freed)"
    return f"{len(states)} entries: {parts}; {action}"


def run(args: argparse.Namespace) -> int:
    dry_run = bool(getattr(args, "dry_run", False))
    root = Path(getattr(args, "root", DEFAULT_ROOT))
    failures_root = Path(getattr(args, "failures_root", DEFAULT_FAILURES_ROOT))
    store = ArtifactStore(root, failures_root)
    store_states = store.entries()
    store_removed = store.purge(dry_run=dry_run, states=store_states)
    errors = [f"could not remove {path}: {problem}" for path, problem in store.purge_errors]
    store_root_states = [s for s in store_states if not _is_within(s.path, failures_root)]
    failure_states = [s for s in store_states if _is_within(s.path, failures_root)]

    rc = 0
    neuron: dict[str, Any] | None = None
    if getattr(args, "neuron_cache", False):
        from pytest_autoport import neuron_cache

        neuron = {"dir": None, "entries": [], "removed": [], "error": None}
        try:
            cache_dir = neuron_cache.neuron_cache_dir()
            neuron["dir"] = cache_dir
            neuron["entries"] = neuron_cache.classify_neuron_cache(cache_dir)
            neuron["removed"] = neuron_cache.purge_neuron_cache(
                cache_dir, dry_run=dry_run, states=neuron["entries"]
            )
        except AutoportError as exc:
            neuron["error"] = str(exc)
            rc = 1

    all_states = store_states + (neuron["entries"] if neuron else [])
    all_removed = store_removed + (neuron["removed"] if neuron else [])
    if errors:
        rc = 1

    if getattr(args, "json", False):
        payload: dict[str, Any] = {
            "dry_run": dry_run,
            "root": str(root),
            "failures_root": str(failures_root),
            "entries": [s.to_dict() for s in store_states],
            "removed": [s.to_dict() for s in store_removed],
            "errors": errors,
        }
        if neuron is not None:
            payload["neuron_cache"] = {
                "dir": str(neuron["dir"]) if neuron["dir"] else None,
                "entries": [s.to_dict() for s in neuron["entries"]],
                "removed": [s.to_dict() for s in neuron["removed"]],
                "error": neuron["error"],
            }
        print(json.dumps(payload, indent=2))
        return rc

    lines = _section("Compiled artifacts", root, store_root_states, store_removed, dry_run)
    lines += [""] + _section("Compilation failures", failures_root, failure_states, store_removed, dry_run)
    if neuron is not None:
        lines.append("")
        if neuron["dir"] is not None:
            lines += _section(
                "Neuron compile cache", neuron["dir"], neuron["entries"], neuron["removed"], dry_run
            )
        if neuron["error"]:
            lines.append(f"Neuron compile cache: {neuron['error']}")
    lines += [f"error: {line}" for line in errors]
    lines.append("")
    lines.append(_summary(all_states, all_removed, dry_run))
    print("\n".join(lines))
    sys.stdout.flush()
    return rc
