"""Who holds what: process liveness, flock probes, lock-holder records and the shared "in use" lock."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

try:  # pragma: no cover - fcntl exists everywhere this harness runs (Linux)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]


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


# A process using an entry (loading its graphs) holds a shared flock on ``.locks/<entry>.use`` until it exits;
# whoever removes the entry must take it exclusively, without waiting, first.
_HELD_FOR_USE: dict[str, int] = {}


def hold_shared(path: Path) -> bool:
    """Take (once per process) a shared flock on ``path``, kept until the process exits. False when it
    cannot be told (no fcntl)."""
    key = str(path)
    if key in _HELD_FOR_USE:
        return True
    if fcntl is None:  # pragma: no cover
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    except OSError:
        os.close(fd)
        return False
    _HELD_FOR_USE[key] = fd
    return True


def release_shared(path: Path) -> None:
    fd = _HELD_FOR_USE.pop(str(path), None)
    if fd is not None:
        os.close(fd)


def try_exclusive(path: Path) -> int | None:
    """An fd holding an exclusive flock on ``path``, or None when someone holds it (the entry is in use).
    Close the fd to release."""
    if fcntl is None:  # pragma: no cover
        return -1
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd
