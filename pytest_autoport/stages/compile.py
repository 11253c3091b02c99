"""Stage ``compile``: static-shape graphs for every bucket, stored under a content-addressed key."""

from __future__ import annotations

import ast
import hashlib
import warnings
from dataclasses import asdict
from pathlib import Path

from ..checksums import checkpoint_fingerprint
from ..errors import AutoportError
from ..targets.base import CompileResult

CHECKSUM_CACHE = "checkpoint_checksums.json"


def key_inputs(session) -> dict:
    """Everything that changes a compiled artifact. Leaving one out means reusing stale graphs."""
    spec = session.spec
    sources = port_sources(spec.port_class_file.parent)
    return {
        "spec": spec.name,
        "spec_sha256": hashlib.sha256(spec.path.read_bytes()).hexdigest(),
        "port_sources": {
            str(p.relative_to(spec.project_root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sources
        },
        "weights": checkpoint_fingerprint(session.weights.path, session.artifacts / "data" / CHECKSUM_CACHE),
        "harness": harness_fingerprint(),
        "target": session.target_name,
        "dtype": spec.port.dtype,
        "batch_size": spec.port.batch_size,
        "context_buckets": spec.port.context_bucket_list,
        "token_generation_buckets": spec.port.token_bucket_list,
        "max_seq_len": spec.port.max_seq_len,
        "tp_degree": spec.port.tp_degree,
        "compiler": spec.port.compiler,
        "versions": session.target.versions(),
    }


def harness_fingerprint() -> dict:
    """The harness's version and the sources that shape what it compiles (the targets, the buckets)."""
    from .. import __version__

    package = Path(__file__).resolve().parents[1]
    files = sorted((package / "targets").glob("*.py")) + [package / "buckets.py"]
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.relative_to(package).as_posix().encode() + b"\0" + file.read_bytes() + b"\0")
    return {"version": __version__, "sources_sha256": digest.hexdigest()}


def port_sources(port_dir: Path) -> list[Path]:
    """The port package's files and those of every sibling package it imports, directly or through
    another (``neuron_port.common``, or a port built on another port such as int8 on llama)."""
    root = port_dir.parent
    packages, todo = set(), [port_dir]
    while todo:
        package = todo.pop()
        if package in packages or not package.is_dir():
            continue
        packages.add(package)
        for file in _python_files(package):
            todo += (root / name for name in _sibling_imports(file, root))
    return sorted(file for package in packages for file in _python_files(package))


def _python_files(package: Path) -> list[Path]:
    return [p for p in package.rglob("*.py") if "__pycache__" not in p.parts]


def _sibling_imports(file: Path, root: Path) -> set[str]:
    """Names of the packages under ``root`` that ``file`` imports, absolutely or relatively."""
    try:
        tree = ast.parse(file.read_bytes(), filename=str(file))
    except SyntaxError:  # a file the port does not import (it would have failed to load): hashed only
        return set()
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) or (isinstance(node, ast.ImportFrom) and node.level == 0):
            modules = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module]
            for head, _, rest in (module.partition(".") for module in modules):
                if head == root.name and rest:
                    names.add(rest.split(".")[0])
        elif isinstance(node, ast.ImportFrom):  # relative: level 1 is the file's own package
            package = file.parent.relative_to(root).parts
            base = package[: max(0, len(package) - node.level + 1)]
            targets = [node.module] if node.module else [alias.name for alias in node.names]
            names.update([base[0]] if base else [t.split(".")[0] for t in targets])
    return names


def compile_port(session):
    """(store entry, CompileResult); compiles only when no ready artifact has this key."""
    from ..artifacts import ArtifactStore, RebuildWarning

    store = ArtifactStore(session.compiled_root, session.failures_root)
    port = session.port_in(session.dtype)

    def build(out_dir):
        return asdict(session.target.compile(port, session.spec, out_dir))

    entry = store.get_or_build(session.spec.name, key_inputs(session), build, hold=True)
    if entry.recovered_from:
        warnings.warn(
            RebuildWarning(f"compiled artifact {entry.path} rebuilt: {entry.recovered_from}"), stacklevel=2
        )
    for leftover in entry.cleaned:
        warnings.warn(
            RebuildWarning(f"removed {leftover}, the temporary folder of a killed build"), stacklevel=2
        )
    try:
        return entry, CompileResult(**entry.manifest["build"])
    except TypeError as exc:  # a sealed manifest from an incompatible harness version
        raise AutoportError(f"{entry.path / 'manifest.json'}: unusable build record ({exc})") from None


def run(session) -> dict:
    entry, result = session.compiled
    figures = {
        "artifact": str(entry.path),
        "key": entry.key,
        "compiled": entry.built,
        "graphs": len(result.graphs),
        "compiler": result.details.get("compiler", session.spec.port.compiler),
    }
    if entry.recovered_from:
        figures["rebuilt_after"] = entry.recovered_from
    if entry.cleaned:
        figures["cleaned_leftovers"] = list(entry.cleaned)
    figures.update({f"compile_s.{name}": s for name, s in result.seconds_per_graph.items()})
    return figures
