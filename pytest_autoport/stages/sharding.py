"""Stage ``sharding[tp=N]`` (nxdi): the port at tensor parallelism N against the same port at tp 1.

Each mapped module's output and the logits at every position of one context-encoding pass are
compared in FP32; the first module (in execution order) whose tp-N output differs is named. A
sharding bug (a missing all-reduce, a bias added on every rank) leaves tp 1 correct and shows here.
"""

from __future__ import annotations

from ..checks import FP32_REL_TOL
from ..errors import StageFailure
from ..hf_reference import capture_modules
from ..numerics import compare

TIMEOUT_S = 900


def run(session, tp: int = 2) -> dict:
    from ..targets.nxdi.sharding import run_sharded

    port = session.port
    paths = []
    for _, _, port_path, _ in session.module_paths:
        try:
            port.get_submodule(port_path)
        except AttributeError:
            continue
        paths.append(port_path)
    ids = session.probe_ids
    reference: dict = {}

    def forward():
        reference["logits"] = session.target.run_model(port, ids)

    captures = capture_modules(port, paths, forward)
    sharded = run_sharded(
        session.spec, ids, paths, tp, session.spec.timeouts.get(f"sharding[tp={tp}]", TIMEOUT_S)
    )
    rows = []
    for path, capture in sorted(captures.items(), key=lambda item: item[1].order):
        actual = sharded["modules"].get(path)
        expected = capture.output
        if actual is None or tuple(actual.shape) != tuple(expected.shape):
            continue  # a per-rank (sharded) output, e.g. per-head norms: not comparable whole
        cmp = compare(actual, expected)
        rows.append(
            {
                "module": path,
                "rel_fro": cmp.rel_fro,
                "ok": cmp.nonfinite is None and cmp.rel_fro <= FP32_REL_TOL,
            }
        )
    logits = compare(sharded["logits"], reference["logits"])
    figures = {
        "tp": tp,
        "modules_compared": len(rows),
        "logits_rel_fro": logits.rel_fro,
        "worst_module_rel_fro": max((r["rel_fro"] for r in rows), default=0.0),
    }
    first = next((r["module"] for r in rows if not r["ok"]), None)
    if first or logits.nonfinite is not None or logits.rel_fro > FP32_REL_TOL:
        figures["first_divergence"] = first
        table = "\n".join(
            f"  {r['module']:<40} {r['rel_fro']:>10.2e}  {'ok' if r['ok'] else 'DIVERGES'}" for r in rows
        )
        where = (
            f"first module whose tp={tp} output differs from tp=1: {first}"
            if first
            else "no mapped module differs"
        )
        raise StageFailure(
            f"tp={tp} logits differ from tp=1: rel_fro {logits.rel_fro:.2e} (limit {FP32_REL_TOL:.0e})\n{where}\n{table}",
            figures,
        )
    return figures
