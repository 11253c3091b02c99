"""The ``nxdi`` target's CPU path: generation and the golden check on NxDI's CPU-mode application,
and the ``sharding[tp=2]`` check (``sharding.py``).

Without NeuronCores, ``compile`` and the device ``generate`` / ``golden`` skip; these items run the
same checks through ``HuggingFaceGenerationAdapter`` over the application ``to_cpu()`` built for
the eager stages (context encoding, then NxDI's token-generation path and KV cache). Every nxdi
item also reports ``path``: "cpu" or "device".
"""

from __future__ import annotations

import copy
import dataclasses

from ..errors import StageFailure
from . import generate, golden, sharding

CPU_VIEW = "_autoport_nxdi_cpu_view"


def cpu_view(session):
    """The session as the generate / golden stages see it, with the CPU application standing in
    for the compiled model (a shallow copy: the HF reference and the port are shared)."""
    view = session.__dict__.get(CPU_VIEW)
    if view is None:
        view = copy.copy(session)
        for name in ("generation", "golden_run", "compiled", "compiled_model"):
            view.__dict__.pop(name, None)
        view.__dict__["compiled_model"] = session.target.cpu_compiled_model(session.spec, session.port)
        session.__dict__[CPU_VIEW] = view
    return view


def run_generate(session) -> dict:
    return generate.run(cpu_view(session))


def run_golden(session) -> dict:
    return golden.run(cpu_view(session))


def _reporting_path(stage):
    """The stage, reporting where it ran (passed or failed) in its figures."""

    def run(session, **params):
        where = getattr(session.target, "stage_path", None)
        path = where(stage.name) if where is not None else None
        try:
            figures = stage.run(session, **params) or {}
        except StageFailure as failure:
            if path:
                failure.figures["path"] = path
            raise
        if path:
            figures["path"] = path
        return figures

    return dataclasses.replace(stage, run=run)


def extend_plan(items: list, stage_def, planned_stage) -> list:
    """The nxdi plan: every item reports its path; the CPU generate and golden come after the model."""
    items = [dataclasses.replace(item, stage=_reporting_path(item.stage)) for item in items]
    extra = [
        planned_stage(
            _reporting_path(stage_def("generate[cpu]", run_generate, requires=("model",))), "generate[cpu]"
        ),
        planned_stage(
            _reporting_path(stage_def("golden[cpu]", run_golden, requires=("model",))), "golden[cpu]"
        ),
    ]
    extra.append(
        planned_stage(
            _reporting_path(stage_def("sharding[tp=2]", sharding.run, requires=("model",))),
            "sharding[tp=2]",
            {"tp": 2},
        )
    )
    at = next((i for i, item in enumerate(items) if item.stage.name == "compile"), len(items))
    return items[:at] + extra + items[at:]
