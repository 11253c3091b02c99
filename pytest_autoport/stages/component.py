"""Stage ``component[...]``: one port submodule against its HF submodule on the same input and weights."""

from __future__ import annotations

from ..errors import AutoportError, StageFailure
from ..hf_reference import hidden_input
from ..numerics import compare, judge_strict

FP32_REL_TOL = 1e-4


def run(session, component, layer) -> dict:
    import torch

    hf_path, port_path = component.hf_path(layer), component.port_path(layer)
    captures, _ = session.hf_trace
    capture = captures.get(hf_path)
    if capture is None:
        raise AutoportError(f"{session.spec.path}: HF module {hf_path!r} never ran in the reference forward pass")
    try:
        module = session.port.get_submodule(port_path)
    except AttributeError:
        raise StageFailure(f"the port has no submodule {port_path!r} (components.port_module of {component.name!r})") from None

    hidden = hidden_input(capture)
    positions = torch.arange(session.probe_ids.shape[1]).expand_as(session.probe_ids).contiguous()
    inputs = {"hidden_states": hidden, "position_ids": positions, "input_ids": session.probe_ids}
    actual = session.target.run_component(module, component.name, inputs)
    cmp = compare(actual, capture.output)
    figures = {"hf_module": hf_path, "port_module": port_path, **cmp.to_dict()}
    verdict = judge_strict(cmp, FP32_REL_TOL)
    if not verdict.ok:
        where = component.name if layer is None else f"{component.name} (layer {layer})"
        raise StageFailure(f"{where} differs from HF {hf_path} in FP32: {verdict.reason}", figures)
    return figures
