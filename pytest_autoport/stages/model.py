"""Stage ``model``: full-model logits against HF; on failure, name the first module that diverges.

Localisation hooks every mapped module (the spec's components, over all layers) in one forward of
each model and compares them in the reference's execution order.
"""

from __future__ import annotations

import math

from ..checks import DEFAULT_BAND, FP32_REL_TOL, check_fp32, check_low_precision
from ..delegation import PortDelegates
from ..errors import StageFailure
from ..hf_reference import capture_modules
from ..numerics import compare, three_tensor_ratio


def run(session, dtype=None) -> dict:
    _, hf_logits = session.hf_trace
    plot = session.plot_path(f"model-{dtype or 'fp32'}")
    figures = {"tokens": int(session.probe_ids.shape[1])}
    try:
        if dtype is None:
            logits = session.run_port_model(session.port)
            return {**figures, **check_fp32(logits, hf_logits, "model logits", plot)}
        _, hf_logits_lp = session.hf_trace_lp
        logits = session.run_port_model(session.port_lp)
        return {
            **figures,
            **check_low_precision(logits, hf_logits_lp, hf_logits, "model logits", plot, dtype_name=dtype),
        }
    except PortDelegates:
        raise  # no module comparison means anything then
    except StageFailure as failure:
        table, first = localise(session, dtype)
        failure.figures.update(figures, first_divergence=first, localisation=table)
        where = (
            f"first divergent module: {first}"
            if first
            else "no mapped module diverges (look at the unmapped glue)"
        )
        raise StageFailure(f"{failure}\n{where}\n{format_table(table, dtype)}", failure.figures) from None


def localise(session, dtype=None) -> tuple[list[dict], str | None]:
    """Per-module comparison, in the reference's execution order; the first failing module is named."""
    captures, _ = session.hf_trace
    port = session.port if dtype is None else session.port_lp
    by_port_path = {}
    for name, hf, port_path, layer in session.module_paths:
        try:
            port.get_submodule(port_path)
        except AttributeError:
            continue
        by_port_path[port_path] = (name, hf, layer)
    port_captures = capture_modules(port, list(by_port_path), lambda: session.run_port_model(port))
    lp_captures = session.hf_trace_lp[0] if dtype else {}
    rows = []
    for port_path, (name, hf_path, layer) in by_port_path.items():
        if hf_path not in captures or port_path not in port_captures:
            continue
        actual, expected = port_captures[port_path].output, captures[hf_path].output
        if actual.shape != expected.shape:
            rows.append(
                {
                    "order": captures[hf_path].order,
                    "module": hf_path,
                    "component": name,
                    "layer": layer,
                    "rel_fro": float("nan"),
                    "max_abs": float("nan"),
                    "r": float("nan"),
                    "ok": False,
                    "nonfinite": None,
                    "shape": f"port {list(actual.shape)} vs HF {list(expected.shape)}",
                }
            )
            continue
        cmp = compare(actual, expected)
        row = {
            "order": captures[hf_path].order,
            "module": hf_path,
            "component": name,
            "layer": layer,
            "rel_fro": cmp.rel_fro,
            "max_abs": cmp.max_abs,
            "nonfinite": cmp.nonfinite,
        }
        if dtype is None:
            row["ok"] = cmp.nonfinite is None and cmp.rel_fro <= FP32_REL_TOL
        else:
            ratio = three_tensor_ratio(actual, lp_captures[hf_path].output, expected)
            row["r"] = ratio
            row["ok"] = cmp.nonfinite is None and not math.isnan(ratio) and ratio <= _band(session, name)[1]
        rows.append(row)
    rows.sort(key=lambda r: r["order"])
    first = next((r["module"] for r in rows if not r["ok"]), None)
    return rows, first


def _band(session, component_name):
    comp = next(c for c in session.spec.components if c.name == component_name)
    return tuple(comp.r_band) if comp.r_band else DEFAULT_BAND


def format_table(rows: list[dict], dtype=None) -> str:
    extra = f" {'R':>8}" if dtype else ""
    lines = [f"  {'module':<40} {'rel_fro':>10} {'max_abs':>10}{extra}  status"]
    for r in rows:
        status = "ok" if r["ok"] else ("NaN/Inf" if r["nonfinite"] else "DIVERGES")
        if "shape" in r:
            status = f"SHAPE MISMATCH ({r['shape']})"
        ratio = f" {r['r']:>8.3g}" if dtype else ""
        lines.append(f"  {r['module']:<40} {r['rel_fro']:>10.2e} {r['max_abs']:>10.2e}{ratio}  {status}")
    return "\n".join(lines)
