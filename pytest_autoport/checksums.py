"""Content checksums of a checkpoint, for keys that must follow the weights, not the folder's name.

A file's sha256 is remembered in a small JSON file by (path, size, mtime, ctime, inode): a re-run with
untouched weights hashes nothing, while a file replaced by another (even of the same size and mtime, as
``cp -p`` leaves it) gets a new ctime or inode and is hashed again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

# the files that decide what a compiled model computes (tokenizer files do not)
_CONTENT_FILES = ("config.json", "model.safetensors.index.json")
# and those that also decide what the HF reference generates from the prompts (the golden's key)
REFERENCE_PATTERNS = (
    "generation_config.json",
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab*",
    "merges.txt",
    "*.model",
    "chat_template*",
)
_CHUNK = 1 << 20


def checkpoint_fingerprint(
    weights_dir: Path, cache_file: Path | None = None, extra_patterns: tuple[str, ...] = ()
) -> dict[str, str]:
    """``{file name: sha256}`` for the checkpoint's config and every safetensors file (and the files
    matching ``extra_patterns``, e.g. :data:`REFERENCE_PATTERNS`)."""
    weights_dir = Path(weights_dir)
    names = sorted(
        {p.name for p in weights_dir.glob("*.safetensors") if p.is_file()}
        | {n for n in _CONTENT_FILES if (weights_dir / n).is_file()}
        | {p.name for pattern in extra_patterns for p in weights_dir.glob(pattern) if p.is_file()}
    )
    cache = _load(cache_file)
    fingerprint, changed = {}, False
    for name in names:
        path = (weights_dir / name).resolve()
        st = path.stat()
        stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        known = cache.get(str(path))
        if isinstance(known, dict) and known.get("stamp") == stamp and isinstance(known.get("sha256"), str):
            fingerprint[name] = known["sha256"]
            continue
        fingerprint[name] = _sha256(path)
        cache[str(path)] = {"stamp": stamp, "sha256": fingerprint[name]}
        changed = True
    if changed and cache_file is not None:
        _save(cache_file, cache)
    return fingerprint


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _load(cache_file: Path | None) -> dict:
    if cache_file is None:
        return {}
    try:
        data = json.loads(Path(cache_file).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _save(cache_file: Path, cache: dict) -> None:
    """Write atomically; losing a race with another process only costs a re-hash."""
    cache_file = Path(cache_file)
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        staging = cache_file.with_name(f"{cache_file.name}.{os.getpid()}.tmp")
        staging.write_text(json.dumps(cache, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(staging, cache_file)
    except OSError:
        pass
