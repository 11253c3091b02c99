"""The compiled-artifact store (DESIGN.md section 5) and the ``autoport clean-cache`` subcommand.

``store`` builds entries atomically under per-key locks; ``inventory`` classifies what is on disk and removes
only what the store provably made; ``files`` checksums, seals and removes entry folders; ``clean_cache`` is
the command line. No torch here: the CLI imports this package and must stay instant.
"""

from .clean_cache import add_arguments, find_project, format_size, run
from .common import (
    FAILURE_NOTE,
    GOLDEN_DIR,
    GOLDEN_FAILURES_DIR,
    KEY_LENGTH,
    LOCKS_DIR,
    MANIFEST,
    MANIFEST_FORMAT,
    OWNER_MARKER,
    PURGEABLE,
    READY,
    STATES,
    TMP_PREFIX,
    CompileFailed,
    Entry,
    EntryState,
    RebuildWarning,
    _age,
    _format_age,
    _tree_size,
    _walk_files,
)
from .files import verify_entry
from .keys import artifact_key
from .processes import _flock_held
from .store import ArtifactStore

__all__ = [
    "FAILURE_NOTE",
    "GOLDEN_DIR",
    "GOLDEN_FAILURES_DIR",
    "KEY_LENGTH",
    "LOCKS_DIR",
    "MANIFEST",
    "MANIFEST_FORMAT",
    "OWNER_MARKER",
    "PURGEABLE",
    "READY",
    "STATES",
    "TMP_PREFIX",
    "ArtifactStore",
    "CompileFailed",
    "Entry",
    "RebuildWarning",
    "EntryState",
    "_age",
    "_flock_held",
    "_format_age",
    "_tree_size",
    "_walk_files",
    "add_arguments",
    "artifact_key",
    "find_project",
    "format_size",
    "run",
    "verify_entry",
]
