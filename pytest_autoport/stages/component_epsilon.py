"""The FP32 epsilon probe of a norm component (part of ``component[...norm...]``): the norm run on its
reference input scaled so that the mean square equals the HF module's epsilon. On activations of
ordinary size the epsilon hardly shows (a port with 1e-5 where the config says 1e-6 differs by ~4e-5,
under the FP32 tolerance); here it is half the denominator, so an epsilon other than the config's, or one
added in another place, moves the output by tens of percent while a correct port stays exact.
"""

from __future__ import annotations

from ..checks import check_fp32
from ..errors import StageFailure
from ..hf_reference import first_tensor
from ..output_forms import align
from .component_probes import probed

EPSILON_ATTRIBUTES = ("variance_epsilon", "eps", "epsilon")


def hf_epsilon(module) -> float | None:
    """The epsilon an HF norm module adds (None: not a norm with a readable epsilon)."""
    for name in EPSILON_ATTRIBUTES:
        value = getattr(module, name, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return float(value)
    return None


def run_epsilon_probe(
    session, component, layer, where: str, port_module, inputs: dict, capture, call_hf
) -> dict:
    """Figures ``{"epsilon_probe": {...}}`` ({} when the component is not a norm with an epsilon); raises
    StageFailure when the port's output differs from HF's in FP32 on the scaled input."""
    import torch

    hidden = inputs["hidden_states"]
    hf_module = session.hf_model.get_submodule(component.hf_path(layer))
    eps = hf_epsilon(hf_module)
    if not probed(component) or eps is None or not hidden.is_floating_point():
        return {}
    mean_square = float(hidden.double().pow(2).mean())
    if not mean_square > 0:
        return {}
    scaled = hidden * (eps / mean_square) ** 0.5
    with torch.inference_mode():
        expected = first_tensor(call_hf(hf_module, capture, scaled, None))
    port_inputs = {**inputs, "hidden_states": scaled}
    if inputs.get("hf_args"):
        port_inputs["hf_args"] = (scaled, *inputs["hf_args"][1:])
    with session.own_modules_only(session.port):
        actual = first_tensor(session.target.run_component(port_module, component.call_kind, port_inputs))
    actual, _ = align(component, actual, expected)
    label = f"{where} on an input of mean square {eps:g} (the HF module's epsilon)"
    try:
        figures = check_fp32(actual, expected, label, None)
    except StageFailure as failure:
        raise StageFailure(
            f"{failure}: the port's norm adds a different epsilon, or adds it in another place (read it from "
            f"the config: {eps:g})",
            {**failure.figures, "epsilon_probe": {"epsilon": eps, "rel_fro": failure.figures.get("rel_fro")}},
        ) from None
    return {"epsilon_probe": {"epsilon": eps, "rel_fro": figures["rel_fro"]}}
