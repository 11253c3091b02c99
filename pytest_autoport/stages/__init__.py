"""The stage chain. Each stage module defines ``run(session, **params) -> figures`` and raises
``StageFailure`` when the port fails its check; this file wires them into an ordered plan."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..spec import PortSpec
from . import compile as compile_stage
from . import component, env, generate, golden, model, weights


@dataclass(frozen=True)
class StageDef:
    name: str
    run: Callable
    requires: tuple[str, ...] = ()
    needs_target: bool = True  # skipped in dry-run mode and where the target cannot run


@dataclass(frozen=True)
class PlannedStage:
    """One pytest item: a stage, possibly parametrised (``component[mlp-layer0]``)."""

    stage: StageDef
    id: str
    params: dict = field(default_factory=dict)


STAGES = {
    "env": StageDef("env", env.run, needs_target=False),
    "weights": StageDef("weights", weights.run, requires=("env",)),
    "component": StageDef("component", component.run, requires=("weights",)),
    "model": StageDef("model", model.run, requires=("weights",)),
    "compile": StageDef("compile", compile_stage.run, requires=("model",)),
    "generate": StageDef("generate", generate.run, requires=("compile",)),
    "golden": StageDef("golden", golden.run, requires=("generate",)),
}


def plan(spec: PortSpec, num_layers: int) -> list[PlannedStage]:
    items = [PlannedStage(STAGES["env"], "env"), PlannedStage(STAGES["weights"], "weights")]
    for comp in spec.components:
        layers = comp.resolved_layers(num_layers) if comp.per_layer else [None]
        for layer in layers:
            suffix = comp.name if layer is None else f"{comp.name}-layer{layer}"
            items.append(
                PlannedStage(STAGES["component"], f"component[{suffix}]", {"component": comp, "layer": layer})
            )
    items += [PlannedStage(STAGES[name], name) for name in ("model", "compile", "generate", "golden")]
    return items
