"""``autoport clean-cache``: classify a compiled-artifact store and purge what it made and no longer needs.

Without ``--root`` the store is the project's: ``<project>/agent_artifacts/data/compiled_model``, where the
project is the nearest folder at or above the current one holding ``port_specs/`` or ``agent_artifacts/``;
the project's golden cache (``agent_artifacts/golden``) is then classified and cleaned too (its sound
entries are kept: only failed, stale, empty and corrupt ones go, as in the compiled store).
Anything the store did not make is listed as ``foreign`` and never removed, whatever folder is named.
No torch here: the CLI must stay instant; filelock is imported only when a lock is taken.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pytest_autoport.errors import AutoportError

from .common import GOLDEN_DIR, GOLDEN_FAILURES_DIR, STATES, EntryState, _is_within, format_size
from .store import ArtifactStore

STORE_IN_PROJECT = Path("agent_artifacts/data/compiled_model")
FAILURES_IN_PROJECT = Path("agent_artifacts/data/compilation_failures")
GOLDEN_IN_PROJECT = Path("agent_artifacts") / GOLDEN_DIR
GOLDEN_FAILURES_IN_PROJECT = Path("agent_artifacts") / GOLDEN_FAILURES_DIR
PROJECT_MARKERS = ("port_specs", "agent_artifacts")


def find_project(start: Path | None = None) -> Path | None:
    """The nearest folder at or above ``start`` (default: the current one) holding port_specs/ or
    agent_artifacts/, or None."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if any((folder / marker).is_dir() for marker in PROJECT_MARKERS):
            return folder
    return None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true", help="list what would be removed; remove nothing")
    parser.add_argument(
        "--root",
        type=Path,
        default=None,
        help=f"compiled-artifact store (default: <project>/{STORE_IN_PROJECT}, the project being the nearest "
        f"folder at or above the current one holding {' or '.join(p + '/' for p in PROJECT_MARKERS)})",
    )
    parser.add_argument(
        "--failures-root",
        type=Path,
        default=None,
        help="where failed builds are kept (default: compilation_failures/ beside the store)",
    )
    parser.add_argument(
        "--neuron-cache",
        action="store_true",
        help="also classify and purge the Neuron compile cache (NEURON_COMPILE_CACHE_URL, else /var/tmp/neuron-compile-cache)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


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
    root = getattr(args, "root", None)
    failures_root = getattr(args, "failures_root", None)
    golden_store = None
    if root is None:
        project = find_project()
        if project is None:
            print(
                f"autoport clean-cache: no project found at or above {Path.cwd()} (no "
                f"{' or '.join(p + '/' for p in PROJECT_MARKERS)}); pass --root",
                file=sys.stderr,
            )
            return 2
        root = project / STORE_IN_PROJECT
        golden_store = ArtifactStore(project / GOLDEN_IN_PROJECT, project / GOLDEN_FAILURES_IN_PROJECT)
    root = Path(root)
    failures_root = (
        Path(failures_root) if failures_root is not None else root.parent / FAILURES_IN_PROJECT.name
    )
    store = ArtifactStore(root, failures_root)
    store_states = store.entries()
    store_removed = store.purge(dry_run=dry_run, states=store_states)
    errors = [f"could not remove {path}: {problem}" for path, problem in store.purge_errors]
    store_root_states = [s for s in store_states if not _is_within(s.path, failures_root)]
    failure_states = [s for s in store_states if _is_within(s.path, failures_root)]
    golden_states: list[EntryState] = []
    golden_removed: list[EntryState] = []
    if golden_store is not None:
        golden_states = golden_store.entries()
        golden_removed = golden_store.purge(dry_run=dry_run, states=golden_states)
        errors += [f"could not remove {path}: {problem}" for path, problem in golden_store.purge_errors]

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

    all_states = store_states + golden_states + (neuron["entries"] if neuron else [])
    all_removed = store_removed + golden_removed + (neuron["removed"] if neuron else [])
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
        if golden_store is not None:
            payload["golden_cache"] = {
                "root": str(golden_store.root),
                "entries": [s.to_dict() for s in golden_states],
                "removed": [s.to_dict() for s in golden_removed],
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
    if golden_store is not None:
        lines += [""] + _section("Golden cache", golden_store.root, golden_states, golden_removed, dry_run)
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
