"""The store's folders and locks: one build lock per key, and a shared "in use" lock per entry."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pytest_autoport.errors import AutoportError

from .common import DEFAULT_STALE_LOCK_AFTER, LOCKS_DIR
from .processes import _proc_start, _read_owner, hold_shared, try_exclusive


class StoreLocks:
    """Compiled artifacts under ``root``, failed builds under ``failures_root``; paths and locking."""

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

    def use_path(self, name: str, key: str) -> Path:
        return self.root / LOCKS_DIR / f"{name}-{key}.use"

    def _owner_path(self, lock_path: Path) -> Path:
        return lock_path.with_suffix(".pid")

    # the build lock
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

    @contextmanager
    def _try_lock(self, name: str, key: str, lock_path: Path | None = None) -> Iterator[bool]:
        """Take an entry's build lock without waiting; yields whether it was taken."""
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

    # the "in use" lock
    def hold_for_use(self, name: str, key: str) -> None:
        """Keep entry ``name-key`` from being removed by a cleaner until this process exits."""
        hold_shared(self.use_path(name, key))

    @contextmanager
    def _unused(self, name: str, key: str) -> Iterator[bool]:
        """Both locks of an entry, without waiting; yields False when a build or a reader holds one."""
        with self._try_lock(name, key) as acquired:
            if not acquired:
                yield False
                return
            fd = try_exclusive(self.use_path(name, key))
            if fd is None:
                yield False
                return
            try:
                yield True
            finally:
                if fd >= 0:
                    os.close(fd)
