"""A Mixtral port whose expert combination is wrong (one expert too few, or top-k weights not
renormalised) while router and experts are right: the MoE block's check and the model check fail, and
both say that the combination diverges since the router and experts checks of that layer passed. (On
transformers 4.x Mixtral's experts are never called as one module, so nothing checks them on their own
and no hint is given: these verdict tests assume 5.x, as the suite does.)"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from pytest_autoport.moe_hints import combination_hint, moe_block
from pytest_autoport.spec import Component

MIXTRAL = "mixtral/modeling_mixtral.py"
TOP_K = "super().__init__(config.hidden_size, experts, config.num_experts_per_tok)"
HINT = (
    "component[router-layer0] and component[experts-layer0] passed: router and experts each match HF, "
    "so their combination (expert selection, weighting, renormalisation) diverges"
)


@pytest.mark.parametrize(
    "buggy",
    [
        pytest.param(
            "super().__init__(config.hidden_size, experts, config.num_experts_per_tok - 1)",
            id="top_k_minus_one",
        ),
        pytest.param(
            "super().__init__(config.hidden_size, experts, config.num_experts_per_tok, normalize_top_k=False)",
            id="top_k_not_renormalised",
        ),
    ],
)
def test_combination_bug_names_the_combination(make_project, buggy):
    project = make_project("mixtral")
    project.replace(MIXTRAL, TOP_K, buggy)
    project.run("-k", "(router-layer0 or experts-layer0 or mlp-layer0 or model) and not bfloat16")
    statuses = project.statuses()
    assert {sid for sid, status in statuses.items() if status == "failed"} == {
        "component[mlp-layer0]",
        "model",
    }
    mlp = project.stage("component[mlp-layer0]")
    assert mlp["message"].startswith("mlp (layer 0) differs from HF in FP32")
    assert HINT in mlp["message"]
    assert mlp["figures"]["moe_hint"] == HINT
    model = project.stage("model")
    assert model["figures"]["first_divergence"] in ("model.layers.0.mlp.experts", "model.layers.0.mlp")
    assert HINT in model["message"]


def test_no_hint_when_the_experts_fail_too(make_project):
    project = make_project("mixtral")
    project.replace(MIXTRAL, '"w1", "w3", "w2"', '"w3", "w1", "w2"')  # gate and up swapped in every expert
    project.run("-k", "(router-layer0 or experts-layer0 or mlp-layer0) and not bfloat16")
    statuses = project.statuses()
    assert statuses["component[experts-layer0]"] == statuses["component[mlp-layer0]"] == "failed"
    assert "combination" not in project.stage("component[mlp-layer0]")["message"]


MOE = [
    Component("router", "model.layers.{i}.mlp.gate"),
    Component("experts", "model.layers.{i}.mlp.experts", call="hf_args"),
    Component("mlp", "model.layers.{i}.mlp"),
    Component("decoder_layer", "model.layers.{i}"),
]
PASSED = {"component[router-layer0]": "passed", "component[experts-layer0]": "passed"}


def _moe_session(children=("gate", "experts")):
    """A stand-in session: the spec MOE, and an HF model whose layer-0 MoE block holds ``children``."""
    import torch

    block = torch.nn.Module()
    for name in children:
        block.add_module(name, torch.nn.Linear(2, 2))
    return SimpleNamespace(
        spec=SimpleNamespace(components=MOE),
        module_paths=[(c.name, c.hf_path(0), c.port_path(0), 0) for c in MOE],
        hf_model=SimpleNamespace(get_submodule={"model.layers.0.mlp": block}.__getitem__),
    )


def test_the_moe_block_is_the_innermost_component_holding_router_and_experts():
    spec = SimpleNamespace(components=MOE)
    assert moe_block(spec, "model.layers.0.mlp", 0).name == "mlp"
    assert moe_block(spec, "model.layers.0.mlp.experts", 0).name == "mlp"
    assert moe_block(spec, "model.layers.0", 0) is None  # a decoder layer fails for other reasons too
    assert moe_block(spec, "model.layers.0.self_attn", 0) is None


@pytest.mark.parametrize(
    ("outcomes", "dtype", "expected"),
    [
        (PASSED, None, True),
        ({**PASSED, "component[experts-layer0]": "failed"}, None, False),
        ({"component[router-layer0]": "passed"}, None, False),  # experts not checked in this run
        (PASSED, "bfloat16", False),  # the low-precision checks of router and experts did not run
    ],
)
def test_hint_needs_router_and_experts_passed_at_the_same_precision(outcomes, dtype, expected):
    hint = combination_hint(_moe_session(), "model.layers.0.mlp", 0, dtype, outcomes)
    assert (hint == HINT) is expected


def test_hint_names_a_block_submodule_no_check_covers():
    hint = combination_hint(
        _moe_session(("gate", "experts", "shared_expert")), "model.layers.0.mlp", 0, None, PASSED
    )
    assert hint == f"{HINT}, or shared_expert (not checked on its own)"
