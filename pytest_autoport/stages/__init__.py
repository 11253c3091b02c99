"""The stage chain. Each stage module defines ``run(session, **params) -> figures`` and raises
``StageFailure`` when the port fails its check; this file wires them into an ordered plan."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..spec import PortSpec
from . import compile as compile_stage
from . import component, env, generate, golden, hygiene, model, nxdi_cpu, preflight, weights


@dataclass(frozen=True)
class StageDef:
    name: str
    run: Callable
    requires: tuple[str, ...] = ()
    needs_target: bool = True  # skipped where the target cannot run
    runs_in_dry_run: Callable = lambda session: False  # --autoport-dry-run skips the stage unless True


@dataclass(frozen=True)
class PlannedStage:
    """One pytest item: a stage, possibly parametrised (``component[mlp-layer0]``)."""

    stage: StageDef
    id: str
    params: dict = field(default_factory=dict)


STAGES = {
    "env": StageDef("env", env.run, needs_target=False, runs_in_dry_run=lambda session: True),
    "preflight": StageDef(
        "preflight", preflight.run, ("env",), needs_target=False, runs_in_dry_run=lambda s: True
    ),
    "hygiene": StageDef("hygiene", hygiene.run, ("env",), needs_target=False, runs_in_dry_run=lambda s: True),
    # the weight mapping needs the target only where building the eager port does (nxdi)
    "weights": StageDef(
        "weights",
        weights.run,
        requires=("env",),
        runs_in_dry_run=lambda session: session.target_name == "torch",
    ),
    "component": StageDef("component", component.run, requires=("weights",)),
    "model": StageDef("model", model.run, requires=("weights",)),
    "compile": StageDef("compile", compile_stage.run, requires=("model",)),
    "generate": StageDef("generate", generate.run, requires=("compile",)),
    "golden": StageDef("golden", golden.run, requires=("generate",)),
}


DEFAULT_TIMEOUTS = {  # seconds; a spec's [timeouts] table overrides them
    "env": 120,
    "preflight": 300,
    "hygiene": 120,
    "weights": 600,
    "component": 600,
    "model": 1800,
    "compile": 7200,
    "generate": 1800,
    "golden": 3600,
    "generate[cpu]": 1800,  # nxdi without NeuronCores
    "golden[cpu]": 3600,
    "sharding[tp=2]": 1800,
}


def plan(
    spec: PortSpec, num_layers: int, lp_dtype: str | None, present=None, target: str | None = None
) -> list[PlannedStage]:
    """Every stage item in order. Each component and the model are checked in FP32 (ids without a
    dtype suffix) and, unless ``lp_dtype`` is None, in that low precision (``-bfloat16`` suffix).
    ``present`` (component name, layer) pairs, when given, drop layers that lack the module.
    ``target`` is the run's effective target (``--autoport-target``), else the spec's."""
    items = [PlannedStage(STAGES[name], name) for name in ("env", "preflight", "hygiene", "weights")]
    dtypes = [None] + ([lp_dtype] if lp_dtype else [])
    for dtype in dtypes:
        for comp in spec.components:
            layers = comp.resolved_layers(num_layers) if comp.per_layer else [None]
            for layer in layers:
                if present is not None and (comp.name, layer) not in present:
                    continue
                suffix = comp.name if layer is None else f"{comp.name}-layer{layer}"
                suffix += f"-{dtype}" if dtype else ""
                params = {"component": comp, "layer": layer, "dtype": dtype}
                items.append(PlannedStage(STAGES["component"], f"component[{suffix}]", params))
    items.append(PlannedStage(STAGES["model"], "model", {"dtype": None}))
    if lp_dtype:
        items.append(PlannedStage(STAGES["model"], f"model[{lp_dtype}]", {"dtype": lp_dtype}))
    items += [PlannedStage(STAGES[name], name) for name in ("compile", "generate", "golden")]
    if (target or spec.port.target) == "nxdi":
        items = nxdi_cpu.extend_plan(items, StageDef, PlannedStage)
    return items


def timeout_for(stage: str, spec: PortSpec) -> float:
    return spec.timeouts.get(stage, DEFAULT_TIMEOUTS[stage])
