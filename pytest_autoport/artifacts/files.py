"""An entry's files: checksums, the manifest and its READY seal, proof of ownership, and removal.

``READY`` holds the sha256 of ``manifest.json``, and the manifest lists every other file's size and
sha256: so the manifest's own records (``build``, ``key_inputs``) are verified like the files they describe.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path, PurePath

from .common import MANIFEST, OWNER_MARKER, READY, _walk_files

_HASH_CHUNK = 1 << 20


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _hash_tree(folder: Path) -> dict[str, dict]:
    files: dict[str, dict] = {}
    for file in _walk_files(folder):
        rel = file.relative_to(folder).as_posix()
        if rel in (MANIFEST, READY, OWNER_MARKER):
            continue
        files[rel] = {"sha256": _sha256(file), "size": file.stat().st_size}
    return files


def fsync_folder(folder: Path) -> None:
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


def mark_owned(folder: Path, what: str) -> None:
    """Claim a folder the store has just made (``what`` says which: build, entry, failure)."""
    (folder / OWNER_MARKER).write_text(json.dumps({"made_by": "pytest-autoport", "what": what}) + "\n")


def ownership(folder: Path, name: str | None = None, key: str | None = None) -> str | None:
    """Why ``folder`` is provably the store's (its marker, or a manifest naming this very entry), or None."""
    if (folder / OWNER_MARKER).is_file():
        return "marker"
    manifest, _ = _read_manifest(folder)
    if manifest is not None and name and key and (manifest.get("name"), manifest.get("key")) == (name, key):
        return "manifest"
    return None


def remove_owned(folder: Path) -> None:
    """Remove a folder the store made: READY first (it stops being ready), the ownership marker last, so an
    interrupted removal leaves something still provably ours. Symlinks are removed, never followed."""
    if folder.is_symlink() or not folder.is_dir():
        folder.unlink(missing_ok=True)
        return
    marker = folder / OWNER_MARKER
    if not marker.is_file() and any(folder.iterdir()):
        marker.write_text(json.dumps({"made_by": "pytest-autoport", "what": "removal"}) + "\n")
    (folder / READY).unlink(missing_ok=True)
    for dirpath, dirnames, filenames in os.walk(folder, topdown=False):
        here = Path(dirpath)
        for filename in filenames:
            if here == folder and filename == OWNER_MARKER:
                continue
            (here / filename).unlink(missing_ok=True)
        for dirname in dirnames:
            sub = here / dirname
            if sub.is_symlink():
                sub.unlink(missing_ok=True)
            else:
                sub.rmdir()
    marker.unlink(missing_ok=True)
    folder.rmdir()


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


def seal(folder: Path) -> None:
    """Write READY (last): the sha256 of the manifest, so a changed manifest no longer counts as ready."""
    _write_file_synced(folder / READY, _sha256(folder / MANIFEST) + "\n")


def verify_entry(
    folder: Path, name: str | None = None, key: str | None = None
) -> tuple[str | None, dict | None]:
    """Check a ready entry: READY sealing this manifest, the manifest naming this entry, every listed file
    present with the listed size and sha256. Returns ``(problem, manifest)``; ``problem`` is None when sound."""
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
    try:
        sealed = (folder / READY).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        sealed = ""
    if sealed != _sha256(folder / MANIFEST):
        why = "made by an older autoport" if not sealed else "edited after the build"
        return f"{MANIFEST} does not match its READY seal ({why})", manifest
    if name is not None and key is not None and (manifest.get("name"), manifest.get("key")) != (name, key):
        return (
            f"{MANIFEST} describes {manifest.get('name')}-{manifest.get('key')}, folder is {name}-{key}",
            manifest,
        )
    if not isinstance(manifest.get("build"), dict):
        return f"{MANIFEST} has no build record", manifest
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
