"""What is on disk in a store, and removing what the store made and no longer needs.

Only what the store can prove it made is ever removed: entry, temporary and failure folders carrying its
ownership marker (or, for entries, a manifest naming the folder), empty folders named by its scheme, and
lock files in its ``.locks`` folder. Everything else is reported as ``foreign`` and left alone.
"""

from __future__ import annotations

import os
from pathlib import Path

from .common import (
    ENTRY_RE,
    FAILURE_NOTE,
    FAILURE_RE,
    LOCKS_DIR,
    LOG_SUFFIXES,
    OWNER_MARKER,
    PURGEABLE,
    READY,
    TMP_PREFIX,
    TMP_RE,
    EntryState,
    _age,
    _format_age,
    _is_within,
    _split_entry_name,
    _tree_size,
    _walk_files,
)
from .files import ownership, remove_owned, verify_entry
from .locking import StoreLocks
from .processes import _flock_held, _pid_alive, _read_owner

FOREIGN = "not made by autoport (left alone)"


def _foreign(path: Path, why: str = FOREIGN) -> EntryState:
    return EntryState(path, path.name, "", "foreign", why, _tree_size(path))


class StoreInventory(StoreLocks):
    def entries(self) -> list[EntryState]:
        """Classify everything under root (entries, temporary build folders, locks) and failures_root."""
        states: list[EntryState] = []
        if self.root.is_dir():
            for child in sorted(self.root.iterdir()):
                real_dir = child.is_dir() and not child.is_symlink()
                if child.name == LOCKS_DIR and real_dir:
                    continue
                if child.name.startswith(TMP_PREFIX) and real_dir:
                    states.append(self._classify_tmp(child))
                elif ENTRY_RE.match(child.name) and real_dir:
                    states.append(self._classify_entry(child))
                else:
                    states.append(_foreign(child))
            states.extend(self._classify_locks())
        if self.failures_root.is_dir() and not _is_within(self.failures_root, self.root):
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
        if ownership(folder, name, key) is None:
            return state("foreign", f"no {OWNER_MARKER} and no manifest naming it: {FOREIGN}")
        if not (folder / READY).is_file():
            logs = [f for f in files if f.endswith(LOG_SUFFIXES) or Path(f).name == FAILURE_NOTE]
            if logs:
                return state("failed", f"no {READY} marker; failure log {logs[0]}")
            return state("corrupt", f"no {READY} marker (incomplete build, {len(files)} files)")
        problem, manifest = verify_entry(folder, name, key)
        if problem is not None or manifest is None:
            return state("corrupt", problem or "unreadable entry")
        listed = len(manifest.get("files", {}))
        return state(
            "ready", f"{listed} file{'' if listed == 1 else 's'}, built {manifest.get('created_at', '?')}"
        )

    def _classify_tmp(self, folder: Path) -> EntryState:
        match = TMP_RE.match(folder.name)
        name, key = (match["name"], match["key"]) if match else (folder.name, "")
        size = _tree_size(folder)
        if not (folder / OWNER_MARKER).is_file() and any(_walk_files(folder)):
            return EntryState(folder, name, key, "foreign", f"no {OWNER_MARKER}: {FOREIGN}", size)
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
            if path.suffix not in (".lock", ".pid") or path.stem in seen or not ENTRY_RE.match(path.stem):
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
        if not path.is_dir() or path.is_symlink():
            return _foreign(path)
        note = path / FAILURE_NOTE
        if not note.is_file() and not (path / OWNER_MARKER).is_file():
            if FAILURE_RE.match(path.name) and not any(path.iterdir()):
                return EntryState(path, name, "", "empty", "no files", 0)
            return _foreign(path, f"no {FAILURE_NOTE}: {FOREIGN}")
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

    # removal
    def purge(self, *, dry_run: bool = False, states: list[EntryState] | None = None) -> list[EntryState]:
        """Remove failed, stale-lock, empty and corrupt entries and leftover temporary folders; never ready
        entries, live locks, entries in use or anything foreign. Each is re-checked (under its locks where it
        has them) right before removal. ``dry_run`` removes nothing. Returns what was (or would be) removed;
        failures land in purge_errors."""
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

    def drop(self, state: EntryState) -> str:
        """Remove one entry whatever its state (a ready one included), if the store made it and nobody uses
        it. Returns what happened: ``removed``, ``in use``, ``foreign`` or ``gone``."""
        path = state.path
        if not os.path.lexists(path):
            return "gone"
        name, key = _split_entry_name(path.name)
        if path.parent != self.root or not key:
            return "foreign"
        with self._unused(name, key) as free:
            if not free:
                return "in use"
            if self._classify_entry(path).state == "foreign":
                return "foreign"
            remove_owned(path)
            return "removed"

    def _remove(self, state: EntryState) -> bool:
        path = state.path
        if not os.path.lexists(path):
            return False
        if path.parent == self.failures_root:
            if self._classify_failure(path).state not in PURGEABLE:
                return False
            remove_owned(path)
            return True
        if path.parent == self.root / LOCKS_DIR:
            return self._remove_lock(path)
        if path.parent != self.root:
            return False
        if path.name.startswith(TMP_PREFIX):
            if self._classify_tmp(path).state not in PURGEABLE:
                return False
            remove_owned(path)
            return True
        name, key = _split_entry_name(path.name)
        if not key:
            return False
        with self._unused(name, key) as free:
            if not free or self._classify_entry(path).state not in PURGEABLE:
                return False
            remove_owned(path)
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
