"""Low-precision probes of one component (part of ``component[...-<dtype>]``): the component is run on
synthetic inputs with real-model activation statistics (see :mod:`pytest_autoport.numerics_probes`), in the
same shape as the reference activations so every other call argument stays valid, and judged by the same
band: the plain three-tensor ratio R and the row-gain ratio.
"""

from __future__ import annotations

import copy
import math

from ..errors import StageFailure
from ..hf_reference import first_tensor
from ..numerics import compare, judge_ratio, three_tensor_ratio
from ..numerics_probes import PROBES, gain_ratio, probe_input
from ..output_forms import align

PROBE_TOKENS = 512


def probed(component) -> bool:
    """Norms only: they read the residual stream, whose statistics the probes imitate. Attention and
    MLPs read normalised activations (fed residual-stream magnitudes, a correct attention's softmax
    saturates differently from HF's: R 2-9 on the bundled Llama), MoE blocks and decoder layers route
    between experts, a discrete decision synthetic inputs would flip."""
    return "norm" in component.name


def run_probes(
    session, component, layer, where: str, dtype: str, port_module, inputs: dict, capture, call_hf, band
) -> dict:
    """Figures ``{"probes": {kind: {...}}}``; raises StageFailure when a probe's R or gain R is above
    the band. ``inputs`` are the port's low-precision inputs of the main check; ``call_hf(module, capture,
    hidden, dtype)`` calls an HF module as the main check does."""
    import torch

    hidden = inputs["hidden_states"]
    if not probed(component) or not hidden.is_floating_point():
        return {}
    lp = getattr(torch, dtype)
    hf_module = session.hf_model.get_submodule(component.hf_path(layer))
    hf_lp = copy.deepcopy(hf_module).to(lp)
    results, problems = {}, []
    for seed, (kind, description) in enumerate(PROBES.items()):
        probe = probe_input(kind, _probe_shape(hidden), seed=seed).to(lp)
        with torch.inference_mode():
            ref_fp32 = first_tensor(call_hf(hf_module, capture, probe.float(), None))
            ref_lp = first_tensor(call_hf(hf_lp, capture, probe, lp))
        port_inputs = {**inputs, "hidden_states": probe}
        if inputs.get("hf_args"):
            port_inputs["hf_args"] = (probe, *inputs["hf_args"][1:])
        port_lp = first_tensor(session.target.run_component(port_module, component.call_kind, port_inputs))
        port_lp, _ = align(component, port_lp, ref_fp32)
        if tuple(port_lp.shape) != tuple(ref_fp32.shape):
            raise StageFailure(
                f"{where}: on the {kind} probe the port's output has shape {list(port_lp.shape)}, HF's has {list(ref_fp32.shape)}"
            )
        ratio = three_tensor_ratio(port_lp, ref_lp, ref_fp32)
        gain = gain_ratio(port_lp, ref_lp, ref_fp32)
        cmp = compare(port_lp, ref_fp32)
        results[kind] = {
            "r": _json(ratio),
            "gain_r": _json(gain),
            "rel_fro": cmp.rel_fro,
            "reference_rel_fro": compare(ref_lp, ref_fp32).rel_fro,
        }
        verdict = judge_ratio(ratio, tuple(band), cmp, dtype_name=dtype)
        if not verdict.ok:
            problems.append(f"on the {kind} probe ({description}): {verdict.reason}")
        elif not gain <= band[1]:
            problems.append(
                f"on the {kind} probe ({description}): the per-token gain error is R={gain:.3g}x the "
                f"reference's own {dtype} one (band {band[0]:g}-{band[1]:g}; plain R={ratio:.3g})"
            )
    if problems:
        raise StageFailure(
            f"{where} in {dtype} fails the real-model activation probes (a per-token statistic, e.g. an "
            "RMSNorm variance or rsqrt, computed in low precision where the reference uses FP32?):\n  "
            + "\n  ".join(problems),
            {"probes": results},
        )
    return {"probes": results}


def _probe_shape(hidden) -> tuple[int, ...]:
    """The hidden input's shape with at least PROBE_TOKENS positions: a norm reads nothing else, and the
    gain ratio is one sample per token, so a tiny probe prompt would leave it noisy."""
    shape = list(hidden.shape)
    if len(shape) >= 3:
        shape[1] = max(shape[1], PROBE_TOKENS)
    return tuple(shape)


def _json(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)
