"""Content-addressed, atomic, self-cleaning store for compiled models (DESIGN.md section 5).

An entry lives in ``root/{name}-{key}`` where ``key`` hashes everything that changes the artifact. It is built
in a temporary folder (claimed with the store's ownership marker) under a per-key file lock, checksummed into
``manifest.json``, sealed with ``READY`` and renamed into place, so a reader never sees half an entry and a
failed build never leaves one. A failed build's folder (logs, graph dumps) moves to ``failures_root``.
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import os
import shutil
import socket
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pytest_autoport.errors import AutoportError

from .common import (
    FAILURE_NOTE,
    MANIFEST,
    MANIFEST_FORMAT,
    OWNER_MARKER,
    TMP_PREFIX,
    TMP_RE,
    CompileFailed,
    Entry,
)
from .files import (
    _hash_tree,
    _write_file_synced,
    fsync_folder,
    mark_owned,
    ownership,
    remove_owned,
    seal,
    verify_entry,
)
from .inventory import StoreInventory
from .keys import _check_name, _json_default, artifact_key


class ArtifactStore(StoreInventory):
    """Compiled artifacts under ``root``, failed builds under ``failures_root``."""

    def get_or_build(
        self, name: str, key_inputs: dict, build: Callable[[Path], dict], *, hold: bool = False
    ) -> Entry:
        """Return the entry for ``key_inputs``, building it with ``build(tmp_dir) -> dict`` if it is not on disk
        (or is corrupt: then it is purged and rebuilt once). Raises :class:`CompileFailed` when ``build`` raises.
        ``hold``: keep the entry from being removed by a cleaner until this process exits."""
        _check_name(name)
        key = artifact_key(key_inputs)
        final = self.entry_path(name, key)
        with self._hold_lock(name, key):
            cleaned = self._clean_leftovers(name, key)
            recovered_from = None
            if os.path.lexists(final):
                problem, manifest = verify_entry(final, name, key)
                if problem is None and manifest is not None:
                    entry = Entry(name, key, final, manifest, built=False, cleaned=cleaned)
                else:
                    if ownership(final, name, key) is None and any(final.iterdir()):
                        raise AutoportError(
                            f"{final} is in the way of a compiled artifact but was not made by autoport "
                            f"(no {OWNER_MARKER}); it was left alone: move it elsewhere"
                        )
                    recovered_from = problem or "unreadable entry"
                    remove_owned(final)
            if recovered_from is not None or not os.path.lexists(final):
                entry = self._build(name, key, key_inputs, build, recovered_from)
                entry.cleaned = cleaned
            if hold:
                self.hold_for_use(name, key)
            return entry

    def _clean_leftovers(self, name: str, key: str) -> tuple[str, ...]:
        """Remove this key's temporary folders of killed builds: whoever holds the key's lock is the only
        builder, so every other one of them is a leftover."""
        if not self.root.is_dir():
            return ()
        cleaned = []
        for child in sorted(self.root.glob(f"{TMP_PREFIX}{name}-{key}-*")):
            match = TMP_RE.match(child.name)
            if match is None or match["name"] != name or match["key"] != key:
                continue
            if child.is_symlink() or not child.is_dir() or int(match["pid"]) == os.getpid():
                continue
            if (child / OWNER_MARKER).is_file() or not any(child.iterdir()):
                try:
                    remove_owned(child)
                except OSError:
                    continue
                cleaned.append(child.name)
        return tuple(cleaned)

    def _build(
        self, name: str, key: str, key_inputs: dict, build: Callable[[Path], dict], recovered_from: str | None
    ) -> Entry:
        final = self.entry_path(name, key)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{name}-{key}-{os.getpid()}-", dir=self.root))
        mark_owned(tmp, "build")
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
            seal(tmp)  # written last: READY means complete
            fsync_folder(tmp)
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
        fsync_folder(self.root)
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
