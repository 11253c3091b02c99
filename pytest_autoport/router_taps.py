"""Router scores observed during a low-precision component check, and the verdict on routing flips.

The routers are the spec's components named ``router``; a component check taps those that sit inside
the module it compares (or are that module), in the HF reference (FP32 and low precision) and in the
port, and :mod:`pytest_autoport.discrete` judges the flips.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .discrete import Flip, keep_tokens, routing_flips
from .errors import StageFailure
from .hf_reference import capture_modules, first_tensor
from .numerics import three_tensor_ratio
from .output_forms import topk_count

ROUTER_NAMES = ("router",)


class RouterTaps:
    """Router paths under one component (relative to its HF and port modules) and what each run saw."""

    def __init__(self, session, component, layer):
        self.k = getattr(session.hf_config, "num_experts_per_tok", None)
        hf_root, port_root = component.hf_path(layer), component.port_path(layer)
        self.paths: list[tuple[str, str, str]] = []  # (name for messages, HF relative, port relative)
        for comp in session.spec.components:
            if comp.name not in ROUTER_NAMES or comp.per_layer != (layer is not None) or not self.k:
                continue
            hf, port = comp.hf_path(layer), comp.port_path(layer)
            hf_rel, port_rel = _relative(hf, hf_root), _relative(port, port_root)
            if hf_rel is not None and port_rel is not None:
                self.paths.append((hf, hf_rel, port_rel))
        self.scores: dict[str, dict[str, object]] = {"fp32": {}, "reference_lp": {}, "port": {}}

    def run(self, side: str, module, call):
        """``call()`` with the routers of ``module`` tapped; returns its result."""
        if not self.paths:
            return call()
        rel = [hf if side != "port" else port for _, hf, port in self.paths]
        result = {}
        try:
            captures = capture_modules(module, rel, lambda: result.setdefault("out", call()))
        except AttributeError:  # a port without the router's submodule: the check itself says so
            return call()
        for (name, *_), path in zip(self.paths, rel):
            if path in captures:
                self.scores[side][name] = router_scores(module.get_submodule(path), captures[path])
        return result["out"]

    def judge(self, tensors: list, where: str, dtype) -> tuple[list, dict]:
        """(the tensors without near-tie flipped tokens, figures); a flip at a clear margin fails."""
        flips: list[Flip] = []
        for name, *_ in self.paths:
            seen = [self.scores[side].get(name) for side in ("fp32", "reference_lp", "port")]
            if any(s is None for s in seen):
                continue
            flips += routing_flips(name, *seen, k=self.k, dtype=dtype)
        if not flips:
            return tensors, {}
        figures = {"routing_flips": [f.to_dict() for f in flips]}
        clear = [f for f in flips if not f.near_tie]
        if clear:
            listed = "\n".join(f"  {f.describe()}" for f in clear[:5])
            raise StageFailure(
                f"{where}: the port routes {len(clear)} token(s) to other experts than HF, at FP32 margins "
                f"too wide for low-precision rounding to explain:\n{listed}",
                figures,
            )
        tokens = sorted({f.token for f in flips})
        figures["routing_near_ties_excluded"] = tokens
        figures["r_all_tokens"] = three_tensor_ratio(*tensors)
        return keep_tokens(tensors, set(tokens)), figures


@torch.no_grad()
def router_scores(router, capture) -> torch.Tensor:
    """The router logits [tokens, experts] a tapped router call saw. A linear router whose output is its
    top-k softmax scattered into dense scores (GPT-OSS on transformers 4.x) has them recomputed from its
    input and weights: margins between experts are read on logits, and the dense zeros hide them."""
    output = first_tensor(capture.output)
    weight = getattr(router, "weight", None)
    if topk_count(output) is None or not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        return output.reshape(-1, output.shape[-1])
    hidden = first_tensor(capture.args[0]) if capture.args else None
    if hidden is None or hidden.shape[-1] != weight.shape[1] or weight.shape[0] != output.shape[-1]:
        return output.reshape(-1, output.shape[-1])
    bias = getattr(router, "bias", None)
    return F.linear(hidden.reshape(-1, hidden.shape[-1]).to(weight.dtype), weight, bias)


def near_tie_note(figures: dict) -> str:
    """One line for a message or the report: which near-tie flips R left out."""
    flips = figures.get("routing_flips") or []
    if not flips:
        return ""
    return (
        f"{len(flips)} near-tie routing flip(s) left out of R (tokens {figures['routing_near_ties_excluded']}; "
        f"R over all tokens {figures['r_all_tokens']:.3g})"
    )


def _relative(path: str, root: str) -> str | None:
    if path == root:
        return ""
    if path.startswith(root + "."):
        return path[len(root) + 1 :]
    return None


def model_router_paths(session) -> list[tuple[str, str]]:
    """(HF path, port path) of every router the full-model check runs, in the reference's order."""
    captures = session.hf_trace[0]
    paths = [
        (hf, port) for name, hf, port, _ in session.module_paths if name in ROUTER_NAMES and hf in captures
    ]
    return sorted(paths, key=lambda p: captures[p[0]].order)


def model_near_ties(session, port_scores: dict, dtype) -> tuple[list[int], list[Flip]]:
    """Tokens whose routing flipped at a near-tie anywhere in the full model (later flips of the same
    token follow from the first and are not judged again), and those flips. Flips at a clear margin
    are left to R."""
    k = getattr(session.hf_config, "num_experts_per_tok", None)
    fp32, lp = session.hf_trace[0], session.hf_trace_lp[0]
    excluded: set[int] = set()
    flips: list[Flip] = []
    for hf, port in model_router_paths(session) if k else []:
        if port not in port_scores or hf not in lp:
            continue
        for flip in routing_flips(hf, fp32[hf].output, lp[hf].output, port_scores[port], k=k, dtype=dtype):
            if flip.token not in excluded and flip.near_tie:
                excluded.add(flip.token)
                flips.append(flip)
    return sorted(excluded), flips
