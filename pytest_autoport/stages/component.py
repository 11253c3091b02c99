"""Stage ``component[...]``: one port submodule against its HF submodule on the same input and weights.

The input is what the HF submodule received during one reference forward pass over the probe
tokens, so the comparison uses real activations and the HF call convention of the installed
transformers version.
"""

from __future__ import annotations

import copy

from ..checks import DEFAULT_BAND, check_fp32, check_low_precision
from ..errors import AutoportError, StageFailure
from ..hf_reference import cast_floats, first_tensor, hidden_input
from ..output_forms import align
from ..router_taps import RouterTaps, near_tie_note
from .component_epsilon import run_epsilon_probe
from .component_probes import run_probes


def run(session, component, layer, dtype=None) -> dict:
    import torch

    hf_path, port_path = component.hf_path(layer), component.port_path(layer)
    captures, _ = session.hf_trace
    capture = captures.get(hf_path)
    if capture is None:
        raise AutoportError(
            f"{session.spec.path}: HF module {hf_path!r} never ran in the reference forward pass"
        )
    where = component.name if layer is None else f"{component.name} (layer {layer})"
    plot = session.plot_path(f"component-{component.name}-{layer}-{dtype or 'fp32'}")
    positions = torch.arange(session.probe_ids.shape[1]).expand_as(session.probe_ids).contiguous()
    encoder_hidden = None
    if session.is_encoder_decoder:
        # decoder modules see the decoder probe (start token + probe), one position longer
        hidden = hidden_input(capture)
        seq = hidden.shape[1] if hidden.dim() >= 2 else session.probe_ids.shape[1]
        positions = torch.arange(seq).expand(session.probe_ids.shape[0], seq).contiguous()
        encoder_hidden = session.hf_encoder_hidden
    figures = {"hf_module": hf_path, "port_module": port_path}

    if dtype is None:
        module = _port_module(session.port, port_path, component)
        inputs = {
            "hidden_states": hidden_input(capture),
            "position_ids": positions,
            "input_ids": session.probe_ids,
        }
        if encoder_hidden is not None:
            inputs["encoder_hidden_states"] = encoder_hidden
        inputs["hf_args"], inputs["hf_kwargs"] = capture.args, capture.kwargs
        with session.own_modules_only(session.port):
            actual = first_tensor(session.target.run_component(module, component.call_kind, inputs))
        actual, figures, where = _in_hf_form(component, actual, capture.output, figures, where)
        checked = check_fp32(actual, capture.output, where, plot)
        epsilon = run_epsilon_probe(session, component, layer, where, module, inputs, capture, _call_hf)
        return {**figures, **checked, **epsilon}

    lp = getattr(torch, dtype)
    hidden = hidden_input(capture)
    hidden_lp = hidden.to(lp) if hidden.is_floating_point() else hidden
    hf_module = session.hf_model.get_submodule(hf_path)
    hf_lp, taps = copy.deepcopy(hf_module).to(lp), RouterTaps(session, component, layer)
    with torch.inference_mode():
        ref_fp32 = taps.run(
            "fp32",
            hf_module,
            lambda: first_tensor(_call_hf(hf_module, capture, hidden_lp.to(hidden.dtype), None)),
        )
        ref_lp = taps.run(
            "reference_lp", hf_lp, lambda: first_tensor(_call_hf(hf_lp, capture, hidden_lp, lp))
        )
    module = _port_module(session.port_lp, port_path, component)
    inputs = {"hidden_states": hidden_lp, "position_ids": positions, "input_ids": session.probe_ids}
    if encoder_hidden is not None:
        inputs["encoder_hidden_states"] = encoder_hidden.to(lp)
    inputs["hf_args"] = (hidden_lp, *cast_floats(capture.args[1:], lp)) if capture.args else ()
    inputs["hf_kwargs"] = cast_floats(capture.kwargs, lp)
    with session.own_modules_only(session.port_lp):
        port_lp = taps.run(
            "port",
            module,
            lambda: first_tensor(session.target.run_component(module, component.call_kind, inputs)),
        )
    port_lp, figures, where = _in_hf_form(component, port_lp, ref_fp32, figures, where)
    band = tuple(component.r_band) if component.r_band else DEFAULT_BAND
    (port_lp, ref_lp, ref_fp32), routing = taps.judge([port_lp, ref_lp, ref_fp32], where, lp)
    if routing:
        figures.update(routing, routing_note=near_tie_note(routing))
    try:
        checked = check_low_precision(
            port_lp,
            ref_lp,
            ref_fp32,
            where,
            plot,
            dtype_name=dtype,
            band=band,
            reason=component.r_band_reason,
        )
    except StageFailure as failure:
        if not routing:
            raise
        raise StageFailure(f"{failure}\n{figures['routing_note']}", {**figures, **failure.figures}) from None
    probes = run_probes(session, component, layer, where, dtype, module, inputs, capture, _call_hf, band)
    return {**figures, **checked, **probes}


def _in_hf_form(component, port_out, hf_out, figures: dict, where: str) -> tuple:
    """The port's output in the form HF's output has on this transformers version (``hf_output_forms``),
    the figures and the name for messages saying so."""
    port_out, form = align(component, port_out, hf_out)
    if not form:
        return port_out, figures, where
    return port_out, {**figures, "hf_output_form": form}, f"{where} (as HF's {form})"


def _port_module(port, path, component):
    try:
        return port.get_submodule(path)
    except AttributeError:
        raise StageFailure(
            f"the port has no submodule {path!r} (components.port_module of {component.name!r})"
        ) from None


def _call_hf(module, capture, hidden, dtype):
    args = (hidden, *cast_floats(capture.args[1:], dtype)) if capture.args else ()
    kwargs = cast_floats(capture.kwargs, dtype)
    if not capture.args:
        key = next(k for k in ("hidden_states", "input", "x", "input_ids") if k in kwargs)
        kwargs[key] = hidden
    return module(*args, **kwargs)
