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
    sources = port_sources(spec.port_class_file.parent, spec.project_root)
    return {
        "spec": spec.name,
        "spec_sha256": hashlib.sha256(spec.path.read_bytes()).hexdigest(),
        "port_sources": {
            _label(p, spec.project_root): hashlib.sha256(p.read_bytes()).hexdigest() for p in sources
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
        "layout": getattr(session.target, "artifact_layout", 1),
        "layers": session.options.layers,  # reduced-layer mode: another model than the full one
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


def port_sources(port_dir: Path, project_root: Path | None = None) -> list[Path]:
    """The port package's files, those of every sibling package it imports, directly or through
    another (a port built on another port such as int8 on llama), the modules and packages of the
    project (``project_root``: ``mylib/``, ``helpers.py``) that any of those files imports, and the
    harness's building blocks (``pytest_autoport.blocks``, wherever they are found) when any of those
    files imports them."""
    root = port_dir.parent
    packages, modules, todo, uses_blocks = set(), set(), [port_dir], False
    while todo:
        package = todo.pop()
        if package in packages or package in modules:
            continue
        if package.is_file():
            modules.add(package)
            files = [package]
        elif package.is_dir():
            packages.add(package)
            files = _python_files(package)
        else:
            continue
        for file in files:
            uses_blocks = uses_blocks or _imports_blocks(file)
            todo += (root / name for name in _sibling_imports(file, root))
            if project_root is not None:
                todo += (p for p in _project_imports(file, project_root) if p.resolve() != root.resolve())
    files = [file for package in packages for file in _python_files(package)] + sorted(modules)
    return sorted(set(files + (list(_blocks_files().values()) if uses_blocks else [])))


def _project_imports(file: Path, project_root: Path) -> list[Path]:
    """The folders and ``.py`` files at the project's root that ``file`` imports absolutely (not the
    harness itself: its blocks are hashed where they are found, the rest is in the harness fingerprint)."""
    try:
        tree = ast.parse(file.read_bytes(), filename=str(file))
    except SyntaxError:
        return []
    heads = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            heads.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            heads.add(node.module.partition(".")[0])
    harness = Path(__file__).resolve().parents[1]
    found = []
    for head in sorted(heads):
        for candidate in (project_root / head, project_root / f"{head}.py"):
            if candidate.exists() and candidate.resolve() != harness:
                found.append(candidate)
    return found


def _blocks_dirs() -> list[Path]:
    from .. import blocks

    return [Path(p) for p in blocks.__path__]


def _blocks_files() -> dict[str, Path]:
    """Each block module by name, from the first folder of the blocks' search path that holds it."""
    found: dict[str, Path] = {}
    for folder in _blocks_dirs():
        for file in _python_files(folder):
            found.setdefault(str(file.relative_to(folder)), file)
    return found


def _imports_blocks(file: Path) -> bool:
    text = file.read_text(errors="replace")
    return "pytest_autoport.blocks" in text or "pytest_autoport import blocks" in text


def _label(path: Path, project_root: Path) -> str:
    """The key's name for a hashed file: project-relative, or ``blocks/<file>`` for a building block."""
    if path.is_relative_to(project_root):
        return str(path.relative_to(project_root))
    for folder in _blocks_dirs():
        if path.is_relative_to(folder):
            return f"blocks/{path.relative_to(folder)}"
    return str(path)


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

    def build(out_dir):  # the eager port is built only when no artifact is cached
        from ..memory_check import check_compile_fits

        port = session.port_in(session.dtype)
        check_compile_fits(port)
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
    files = [f for f in entry.path.rglob("*") if f.is_file()]
    figures["artifact_bytes"] = sum(f.stat().st_size for f in files)
    store = result.details.get("weights", {}).get("file")
    if store:  # one copy of the weights shared by every graph
        figures["weights_bytes"] = (entry.path / store).stat().st_size
    if entry.recovered_from:
        figures["rebuilt_after"] = entry.recovered_from
    if entry.cleaned:
        figures["cleaned_leftovers"] = list(entry.cleaned)
    figures.update({f"compile_s.{name}": s for name, s in result.seconds_per_graph.items()})
    return figures
