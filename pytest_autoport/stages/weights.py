"""Stage ``weights``: the HF checkpoint converts into the port with nothing lost, missing or misshapen."""

from __future__ import annotations

from ..errors import StageFailure
from ..kv_cache import check_port_caches


def run(session) -> dict:
    report, port = session.mapping
    figures = {"weights_kind": session.weights.kind, "weights": session.weights.to_dict()}
    figures.update(report.figures(len(session.hf_state_dict), len(port.state_dict())))
    if not report.ok:
        raise StageFailure(report.message(), figures)
    figures.update(check_port_caches(session))
    return figures
