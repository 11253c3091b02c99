"""Stage ``model``: full-model logits against HF; on failure, name the first module that diverges."""

from __future__ import annotations

from ..errors import StageFailure
from ..hf_reference import capture_modules
from ..numerics import compare, judge_strict
from .component import FP32_REL_TOL


def run(session) -> dict:
    _, hf_logits = session.hf_trace
    logits = session.target.run_model(session.port, session.probe_ids)
    cmp = compare(logits, hf_logits)
    figures = {"tokens": int(session.probe_ids.shape[1]), **cmp.to_dict()}
    verdict = judge_strict(cmp, FP32_REL_TOL)
    if verdict.ok:
        return figures
    table, first = localise(session)
    figures["first_divergence"] = first
    figures["localisation"] = table
    where = f"first divergent module: {first}" if first else "no mapped module diverges (look at the unmapped glue)"
    raise StageFailure(f"model logits differ from HF in FP32: {verdict.reason}\n{where}\n{format_table(table)}", figures)


def localise(session) -> tuple[list[dict], str | None]:
    """Per-module comparison of one full forward of each model, in the reference's execution order."""
    captures, _ = session.hf_trace
    by_port_path = {port: (name, hf, layer) for name, hf, port, layer in session.module_paths}
    port_captures = capture_modules(
        session.port, list(by_port_path), lambda: session.target.run_model(session.port, session.probe_ids)
    )
    rows = []
    for port_path, (name, hf_path, layer) in by_port_path.items():
        if hf_path not in captures or port_path not in port_captures:
            continue
        cmp = compare(port_captures[port_path].output, captures[hf_path].output)
        ok = judge_strict(cmp, FP32_REL_TOL).ok
        rows.append({"order": captures[hf_path].order, "module": hf_path, "component": name, "layer": layer,
                     "rel_fro": cmp.rel_fro, "max_abs": cmp.max_abs, "nonfinite": cmp.nonfinite, "ok": ok})
    rows.sort(key=lambda r: r["order"])
    first = next((r["module"] for r in rows if not r["ok"]), None)
    return rows, first


def format_table(rows: list[dict]) -> str:
    lines = [f"  {'module':<36} {'rel_fro':>10} {'max_abs':>10}  status"]
    for r in rows:
        status = "ok" if r["ok"] else ("NaN/Inf" if r["nonfinite"] else "DIVERGES")
        lines.append(f"  {r['module']:<36} {r['rel_fro']:>10.2e} {r['max_abs']:>10.2e}  {status}")
    return "\n".join(lines)
