"""Hints added to a failing stage's message: port tensors the conversion filled crosswise, the likely
cause from the knowledge base, and for an MoE block whose router and experts passed, that their
combination diverges. Hints only: a stage fails either way."""

from __future__ import annotations

from .errors import StageFailure


def with_hints(failure: StageFailure, planned, session, outcomes: dict[str, str]) -> StageFailure:
    """``failure`` of the item ``planned`` with its crossed weights or else its likely cause, after
    its MoE hint."""
    failure = _with_moe_hint(failure, planned, session, outcomes)
    crossed = _crossed_weights_in(failure, planned, session)
    if crossed:  # the cause is known (kb/weight_conversion.md): a metric signature's guess would mislead
        crossed_failure = StageFailure(
            f"{failure.detail}\nthe weight conversion filled these port tensors crosswise (each from the "
            "checkpoint tensor named like another; check convert_hf_to_neuron_state_dict):\n  "
            + "\n  ".join(crossed),
            {**failure.figures, "crossed_tensors": crossed},
        )
        if crossed_failure.cause is not None:
            crossed_failure.figures["likely_cause"] = crossed_failure.cause.to_dict()
        return crossed_failure
    return _with_likely_cause(failure, planned, outcomes)


def _crossed_weights_in(failure: StageFailure, planned, session) -> list[str]:
    """The crossed conversion lines (``weight_wiring``) that touch the failing module."""
    params = planned.params
    if "component" in params:
        path = params["component"].hf_path(params["layer"])
    else:
        path = failure.figures.get("first_divergence")
    try:
        crossed = session.mapping[0].crossed
    except Exception:  # the conversion itself failed: its own stage says so
        return []
    return [line for line in crossed if path and f"{path}." in line]


def _with_moe_hint(failure: StageFailure, planned, session, outcomes) -> StageFailure:
    """A failing MoE block (its own check, or the model's first divergent module) whose router and
    experts checks passed in this run: the failure says that their combination diverges."""
    from .moe_hints import combination_hint

    params = planned.params
    if "component" in params:
        component, layer = params["component"], params["layer"]
        path = component.hf_path(layer)
    else:
        path = failure.figures.get("first_divergence")
        layer = _layer_of(session, path)
    hint = combination_hint(session, path, layer, params.get("dtype"), outcomes)
    if hint is None or hint in failure.detail:
        return failure
    return StageFailure(f"{failure.detail}\n{hint}", {**failure.figures, "moe_hint": hint})


def _with_likely_cause(failure: StageFailure, planned, outcomes) -> StageFailure:
    """The failure naming its likely cause from its figures where a metric signature fits, and the
    cause in its figures (``likely_cause``)."""
    from .kb import likely_cause_of
    from .kb_metrics import stage_facts

    try:
        facts = stage_facts(planned.id, planned.stage.name, planned.params, failure.figures, outcomes)
    except (AttributeError, KeyError, TypeError, ValueError):  # odd figures: the message's cause stands
        return failure
    detail = "\n".join(line for line in failure.detail.splitlines() if not line.startswith("likely cause: "))
    cause = likely_cause_of(detail, facts)
    if cause is None:
        return failure
    return StageFailure(detail, {**failure.figures, "likely_cause": cause.to_dict()}, cause=cause)


def _layer_of(session, hf_path):
    """The layer of the mapped module at or above ``hf_path`` (None when it is not per layer)."""
    if not hf_path:
        return None
    held = [(hf, at) for _, hf, _, at in session.module_paths if f"{hf_path}.".startswith(f"{hf}.")]
    return max(held, key=lambda entry: len(entry[0]))[1] if held else None
