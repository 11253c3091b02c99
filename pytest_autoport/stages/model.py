"""Stage ``model``: full-model logits against HF; on failure, name the first module that diverges.

Localisation hooks every mapped module (the spec's components, over all layers) in one forward of
each model and compares them in the reference's execution order.
"""

from __future__ import annotations

import math

import torch

from ..checks import DEFAULT_BAND, FP32_REL_TOL, check_fp32, check_low_precision
from ..delegation import PortDelegates
from ..discrete import keep_tokens
from ..errors import StageFailure
from ..hf_reference import capture_modules, hidden_input
from ..numerics import compare, three_tensor_ratio
from ..router_taps import model_near_ties, model_router_paths


def run(session, dtype=None) -> dict:
    _, hf_logits = session.hf_trace
    plot = session.plot_path(f"model-{dtype or 'fp32'}")
    figures = {"tokens": int(session.probe_ids.shape[1])}
    if getattr(session, "skipped_components", None):  # not checked with this transformers, and why
        figures["skipped_components"] = session.skipped_components
    try:
        if dtype is None:
            logits = session.run_port_model(session.port)
            return {**figures, **check_fp32(logits, hf_logits, "model logits", plot)}
        _, hf_logits_lp = session.hf_trace_lp
        logits, routing = _port_logits_without_near_ties(session, [hf_logits_lp, hf_logits])
        figures.update(routing)
        return {
            **figures,
            **check_low_precision(*logits, "model logits", plot, dtype_name=dtype),
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
        where += "".join(f"\n{line}" for line in _explanations(table, first))
        raise StageFailure(f"{failure}\n{where}\n{format_table(table, dtype)}", failure.figures) from None


def _port_logits_without_near_ties(session, references: list) -> tuple[list, dict]:
    """The low-precision port's logits and ``references``, without the tokens whose routing flipped
    at a near-tie (see ``router_taps.model_near_ties``); the figures say which."""
    paths = [port for _, port in model_router_paths(session)]
    port = session.port_lp
    result = {}
    captures = capture_modules(port, paths, lambda: result.setdefault("logits", session.run_port_model(port)))
    scores = {path: capture.output for path, capture in captures.items()}
    tokens, flips = model_near_ties(session, scores, session.lp_dtype)
    tensors = [result["logits"], *references]
    if not tokens:
        return tensors, {}
    figures = {
        "routing_flips": [f.to_dict() for f in flips],
        "routing_near_ties_excluded": tokens,
        "r_all_tokens": three_tensor_ratio(*tensors),
    }
    return keep_tokens(tensors, set(tokens)), figures


def localise(session, dtype=None) -> tuple[list[dict], str | None]:
    """Per-module comparison, in the reference's execution order; the first failing module is named.
    Every mapped module has a row: one that cannot be compared says why (``status``)."""
    captures, _ = session.hf_trace
    port = session.port if dtype is None else session.port_lp
    by_port_path, rows = {}, []
    for name, hf, port_path, layer in session.module_paths:
        try:
            port.get_submodule(port_path)
        except AttributeError:
            rows.append(
                _row_without_figures(captures, hf, name, layer, f"the port has no module {port_path!r}")
            )
            continue
        by_port_path[port_path] = (name, hf, layer)
    port_path_of = {hf: port_path for port_path, (_, hf, _) in by_port_path.items()}
    port_captures = capture_modules(port, list(by_port_path), lambda: session.run_port_model(port))
    lp_captures = session.hf_trace_lp[0] if dtype else {}
    for port_path, (name, hf_path, layer) in by_port_path.items():
        if hf_path not in captures:
            rows.append(_row_without_figures(captures, hf_path, name, layer, "HF never called it"))
            continue
        if port_path not in port_captures:
            rows.append(_row_without_figures(captures, hf_path, name, layer, "the port never called it"))
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
        if not row["ok"]:
            routing = routing_input_divergence(
                captures[hf_path], port_captures[port_path], FP32_REL_TOL if dtype is None else LP_ROUTING_TOL
            )
            if routing:
                row["routing_inputs"] = routing
        rows.append(row)
    rows.sort(key=lambda r: r["order"])
    first = next((r for r in rows if r["ok"] is False), None)
    if first is not None and first["module"] in port_path_of:
        hf_path = first["module"]
        diverged = input_divergence(
            captures[hf_path],
            port_captures[port_path_of[hf_path]],
            lp_captures.get(hf_path),
            _band(session, first["component"])[1],
        )
        if diverged:
            first["input_diverges"] = diverged
    return rows, first["module"] if first else None


def input_divergence(hf_capture, port_capture, hf_lp_capture, band_hi: float) -> str | None:
    """How the hidden-state input a module was given differs from HF's (FP32: rel_fro above the FP32
    tolerance; low precision, ``hf_lp_capture`` given: R above the band), else None."""
    try:
        actual, expected = hidden_input(port_capture), hidden_input(hf_capture)
    except TypeError:
        return None
    floating = all(isinstance(t, torch.Tensor) and t.is_floating_point() for t in (actual, expected))
    if not floating or actual.shape != expected.shape:
        return None
    cmp = compare(actual, expected)
    if hf_lp_capture is None:
        return f"rel_fro {cmp.rel_fro:.2e}" if cmp.rel_fro > FP32_REL_TOL else None
    ratio = three_tensor_ratio(actual, hidden_input(hf_lp_capture), expected)
    return f"R {ratio:.3g}, rel_fro {cmp.rel_fro:.2e}" if ratio > band_hi else None


LP_ROUTING_TOL = 2e-2  # relative error of dense routing weights in low precision (bf16 eps is 7.8e-3)


def _row_without_figures(captures, hf_path, name, layer, why) -> dict:
    order = captures[hf_path].order if hf_path in captures else len(captures)
    nan = float("nan")
    return {
        "order": order,
        "module": hf_path,
        "component": name,
        "layer": layer,
        "rel_fro": nan,
        "max_abs": nan,
        "nonfinite": None,
        "ok": None,
        "status": why,
    }


def routing_input_divergence(hf_capture, port_capture, tol: float) -> str | None:
    """For a module called with routing inputs (experts(hidden, top-k index, top-k weights)): a sentence
    when its hidden-state input matches HF's but the routing it was given does not, else None."""
    hf_routing, port_routing = _routing_of(hf_capture), _routing_of(port_capture)
    if hf_routing is None or port_routing is None:
        return None
    hidden = compare(hidden_input(port_capture), hidden_input(hf_capture))
    if hidden.nonfinite is not None or hidden.rel_fro > tol:
        return None
    experts = 1 + int(max(hf_routing[0].max(), port_routing[0].max()))
    dense_hf, dense_port = _dense(*hf_routing, experts), _dense(*port_routing, experts)
    if hf_routing[0].shape[-1] != port_routing[0].shape[-1]:
        return (
            f"the port hands it {port_routing[0].shape[-1]} experts per token, HF {hf_routing[0].shape[-1]}"
        )
    cmp = compare(dense_port, dense_hf)
    if cmp.rel_fro <= tol:
        return None
    selection = (dense_port != 0).ne(dense_hf != 0).any(dim=-1).sum()
    return (
        f"its hidden-state input matches HF's but its routing weights differ (rel_fro {cmp.rel_fro:.2e}; "
        f"{int(selection)} token(s) with other experts selected)"
    )


def _routing_of(capture):
    """(top-k index, top-k weights) among a capture's tensor arguments after the first, or None."""
    tensors = [a for a in (*capture.args[1:], *capture.kwargs.values()) if isinstance(a, torch.Tensor)]
    index = next((t for t in tensors if not t.is_floating_point()), None)
    weights = next(
        (t for t in tensors if t.is_floating_point() and index is not None and t.shape == index.shape), None
    )
    if index is None or weights is None:
        return None
    return index.reshape(-1, index.shape[-1]).long(), weights.reshape(-1, weights.shape[-1]).double()


def _dense(index, weights, experts):
    return torch.zeros(index.shape[0], experts, dtype=torch.float64).scatter(1, index, weights)


def _explanations(rows: list[dict], first: str | None) -> list[str]:
    out = []
    not_called = [r["module"] for r in rows if r.get("status") == "the port never called it"]
    if not_called:
        out.append(f"mapped modules the port never called: {', '.join(not_called)}")
    first_row = next((r for r in rows if r["module"] == first), None)
    if first_row and first_row.get("input_diverges"):
        out.append(
            f"{first}: its input already differs from HF's ({first_row['input_diverges']}) while no module "
            "compared before it diverges: the code that feeds it (a residual add, a scale, glue outside the "
            "mapped modules) is the likely fault, not the module itself"
        )
    if first_row and first_row.get("routing_inputs"):
        out.append(
            f"{first}: {first_row['routing_inputs']}: the combination of router and experts (top-k selection, "
            "weighting, renormalisation) diverges, not the experts"
        )
    return out


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
        if r["ok"] is None:
            status = f"not compared: {r['status']}"
        elif r.get("routing_inputs"):
            status += " (routing inputs differ)"
        elif r.get("input_diverges"):
            status += " (its input already differs)"
        ratio = f" {r.get('r', float('nan')):>8.3g}" if dtype else ""
        lines.append(f"  {r['module']:<40} {r['rel_fro']:>10.2e} {r['max_abs']:>10.2e}{ratio}  {status}")
    return "\n".join(lines)
