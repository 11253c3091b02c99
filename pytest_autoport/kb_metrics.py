"""Metric signatures: conditions over a failing stage's figures that name a knowledge-base topic
where the message alone cannot (an attention output that is wrong only at later positions points at
RoPE; a golden that fails only in free-running generation points at the KV cache).

Syntax (a topic's ``## Metric signatures`` list, see kb/README.md): one entry a line,
``- `stage=component kind=attention|decoder_layer fp32=failed position_growth>=4`: why``; conditions
are ``fact=value`` (``|`` separates alternatives), ``fact!=value`` or a number comparison
``fact>=n`` / ``>`` / ``<=`` / ``<``; every condition must hold, and a fact the stage lacks holds none.
Facts: ``stage``, ``kind`` (for a model check, ``glue`` when its first divergent module's own input
already differs), ``mode`` (fp32 | low), ``fp32`` (outcome of the FP32 check of the same
component or model: the stage itself in FP32), ``r``, ``nonfinite`` (yes | no), ``position_growth``,
``position0_share``, and for ``golden``: ``teacher_forced``, ``free_running``, ``decode_steps``
(passed | failed) and ``decode_graph`` (the first divergent decode step's graph kind).
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass

_OPS = {
    ">=": operator.ge,
    "<=": operator.le,
    "!=": operator.ne,
    ">": operator.gt,
    "<": operator.lt,
    "=": None,
}
_CONDITION = re.compile(r"^([a-z_0-9]+)(>=|<=|!=|>|<|=)(\S+)$")


class MetricSyntaxError(ValueError):
    """A metric signature that does not parse (names the entry)."""


@dataclass(frozen=True)
class MetricSignature:
    text: str  # the conditions as written
    why: str  # the few words after the entry, printed with the likely cause
    conditions: tuple[tuple[str, str, str], ...]  # (fact, operator, value)

    def matches(self, facts: dict) -> bool:
        return all(_holds(facts.get(name), op, value) for name, op, value in self.conditions)


def parse(line: str, where: str = "") -> MetricSignature:
    """``stage=component kind=attention position_growth>=4`` (with an optional ``: why`` after the
    backticked part in the markdown) -> a MetricSignature; MetricSyntaxError names a bad condition."""
    match = re.match(r"^`([^`]+)`\s*(?::\s*(.*))?$", line.strip())
    text, why = (match.group(1), match.group(2) or "") if match else (line.strip(), "")
    conditions = []
    for token in text.split():
        cond = _CONDITION.match(token)
        if cond is None:
            raise MetricSyntaxError(f"{where}: metric signature {text!r}: cannot read condition {token!r}")
        name, op, value = cond.groups()
        if op not in ("=", "!="):
            try:
                float(value)
            except ValueError:
                raise MetricSyntaxError(
                    f"{where}: metric signature {text!r}: {token!r} compares with a non-number"
                ) from None
        conditions.append((name, op, value))
    if not conditions:
        raise MetricSyntaxError(f"{where}: empty metric signature")
    return MetricSignature(text, why.strip(), tuple(conditions))


def _holds(fact, op: str, value: str) -> bool:
    if fact is None:
        return False
    if op == "=":
        return str(fact) in value.split("|")
    if op == "!=":
        return str(fact) not in value.split("|")
    if isinstance(fact, bool) or not isinstance(fact, (int, float)):
        return False
    return _OPS[op](fact, float(value))


def component_kind(name: str) -> str:
    """The kind of a component (or of an HF module path's last part), from its name."""
    name = name.rsplit(".", 1)[-1].lower()
    for kind, words in (
        ("norm", ("norm",)),
        ("rotary", ("rotary", "rope")),
        ("attention", ("attention", "attn")),
        ("router", ("router", "gate")),
        ("experts", ("experts", "moe")),
        ("embedding", ("embed",)),
        ("lm_head", ("lm_head",)),
        ("mlp", ("mlp", "ffn", "feed_forward", "dense")),
        ("decoder_layer", ("layer", "block")),
    ):
        if any(word in name for word in words):
            return kind
    return "decoder_layer" if name.isdigit() else name  # model.layers.0: a whole layer


def stage_facts(stage_id: str, stage: str, params: dict, figures: dict, outcomes: dict) -> dict:
    """The facts metric signatures read, for a stage that failed with ``figures``."""
    facts = {"stage": stage, "nonfinite": "yes" if figures.get("nonfinite") else "no"}
    for key in ("r", "position_growth", "position0_share"):
        if isinstance(figures.get(key), (int, float)):
            facts[key] = figures[key]
    if stage in ("component", "model"):
        low = bool(params.get("dtype"))
        facts["mode"] = "low" if low else "fp32"
        facts["fp32"] = outcomes.get(_fp32_id(stage_id, params["dtype"]), "not run") if low else "failed"
        if "component" in params:
            facts["kind"] = component_kind(params["component"].name)
        elif figures.get("first_divergence"):
            facts["kind"] = component_kind(figures["first_divergence"])
            if _input_diverges(figures):  # the module is fed wrong: the glue before it is at fault
                facts["kind"] = "glue"
    if stage == "golden":
        facts.update(_golden_facts(figures))
    return facts


def _input_diverges(figures: dict) -> bool:
    rows = figures.get("localisation") or []
    first = figures["first_divergence"]
    return any(isinstance(r, dict) and r.get("module") == first and r.get("input_diverges") for r in rows)


def _fp32_id(stage_id: str, dtype: str) -> str:
    """``component[mlp-layer0-bfloat16]`` -> ``component[mlp-layer0]``; ``model[bfloat16]`` -> ``model``."""
    if stage_id.endswith(f"[{dtype}]"):
        return stage_id[: -len(dtype) - 2]
    return stage_id.replace(f"-{dtype}]", "]")


def _golden_facts(figures: dict) -> dict:
    facts = {}
    threshold = figures.get("threshold")
    if isinstance(threshold, (int, float)):
        forced = figures.get("teacher_forced_match")
        free = figures.get("token_match_margin_aware", figures.get("token_match"))
        if isinstance(forced, (int, float)):
            facts["teacher_forced"] = "passed" if forced >= threshold else "failed"
        if isinstance(free, (int, float)):
            facts["free_running"] = "passed" if free >= threshold else "failed"
    parity = figures.get("decode_parity")
    if isinstance(parity, dict) and "passed" in parity:
        facts["decode_steps"] = "passed" if parity["passed"] else "failed"
        first = parity.get("first_divergent")
        if isinstance(first, dict) and first.get("graph"):
            facts["decode_graph"] = re.sub(r"_\d+$", "", str(first["graph"]))
    return facts
