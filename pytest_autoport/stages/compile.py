"""Stage ``compile``: static-shape graphs for every bucket, stored under a content-addressed key."""

from __future__ import annotations

import hashlib
from dataclasses import asdict

from ..targets.base import CompileResult


def key_inputs(session) -> dict:
    """Everything that changes a compiled artifact. Leaving one out means reusing stale graphs."""
    spec = session.spec
    port_dir = spec.port_class_file.parent
    sources = sorted(p for p in port_dir.rglob("*.py") if "__pycache__" not in p.parts)
    common = port_dir.parent / "common"
    if common.is_dir() and common != port_dir:
        sources += sorted(p for p in common.rglob("*.py") if "__pycache__" not in p.parts)
    return {
        "spec": spec.name,
        "spec_sha256": hashlib.sha256(spec.path.read_bytes()).hexdigest(),
        "port_sources": {
            str(p.relative_to(spec.project_root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sources
        },
        "weights": str(session.weights.path),
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


def compile_port(session):
    """(store entry, CompileResult); compiles only when no ready artifact has this key."""
    from ..artifacts import ArtifactStore

    store = ArtifactStore(session.compiled_root, session.failures_root)
    port = session.port_in(session.dtype)

    def build(out_dir):
        return asdict(session.target.compile(port, session.spec, out_dir))

    entry = store.get_or_build(session.spec.name, key_inputs(session), build)
    return entry, CompileResult(**entry.manifest["build"])


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
    figures.update({f"compile_s.{name}": s for name, s in result.seconds_per_graph.items()})
    return figures
