"""Stage ``weights``: the HF checkpoint converts into the port with nothing lost, missing or misshapen."""

from __future__ import annotations

from ..checkpoint_folder import folder_problem, tokenizer_problem
from ..checkpoint_gaps import gaps_note
from ..errors import StageFailure, figures_on_error
from ..kv_cache import check_port_caches


def run(session) -> dict:
    figures = {"weights_kind": session.weights.kind, "weights": session.weights.to_dict()}
    problem = folder_problem(session.weights.path) or tokenizer_problem(lambda: session.tokenizer)
    if problem:
        raise StageFailure(problem, figures)
    figures["hf_tensors"] = len(session.hf_state_dict)
    with figures_on_error(figures):
        report, port = session.mapping
    figures.update(report.figures(len(session.hf_state_dict), len(port.state_dict())))
    if session.hf_keys_ignored:  # as transformers drops them on load
        figures["hf_keys_ignored"] = session.hf_keys_ignored
    if session.layers_record is not None:  # reduced-layer mode: the later layers' tensors, unused by design
        figures["layers"] = session.layers_record
        figures["hf_tensors_left_out"] = len(session.layer_keys_left_out)
    if not report.ok:
        raise StageFailure(report.message() + gaps_note(session), figures)
    figures.update(check_port_caches(session))
    return figures
