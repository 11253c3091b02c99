"""Localisation of MoE and glue bugs by the model stage: a Mixtral port that selects or weights experts
wrongly names the experts as first divergent module and says that the router/experts combination
diverges (the experts' own check passes); a Qwen3 port that forgets q_norm keeps the q_norm row in the
per-module table, saying the port never called it."""

from __future__ import annotations

import pytest

MIXTRAL = "mixtral/modeling_mixtral.py"
TOP_K = "super().__init__(config.hidden_size, experts, config.num_experts_per_tok)"


@pytest.mark.parametrize(
    ("buggy", "detail"),
    [
        pytest.param(
            "super().__init__(config.hidden_size, experts, config.num_experts_per_tok - 1)",
            "the port hands it 1 experts per token, HF 2",
            id="top_k_minus_one",
        ),
        pytest.param(
            "super().__init__(config.hidden_size, experts, config.num_experts_per_tok, normalize_top_k=False)",
            "its hidden-state input matches HF's but its routing weights differ",
            id="top_k_not_renormalised",
        ),
    ],
)
def test_moe_combination_bug_is_named_as_such(make_project, buggy, detail):
    project = make_project("mixtral")
    project.replace(MIXTRAL, TOP_K, buggy)
    project.run("-k", "(model or experts-layer0 or router-layer0) and not bfloat16")
    statuses = project.statuses()
    assert statuses["component[experts-layer0]"] == statuses["component[router-layer0]"] == "passed"
    model = project.stage("model")
    assert model["status"] == "failed"
    assert model["figures"]["first_divergence"] == "model.layers.0.mlp.experts"
    message = model["message"]
    assert f"model.layers.0.mlp.experts: {detail}" in message
    assert (
        "the combination of router and experts (top-k selection, weighting, renormalisation) diverges"
        in message
    )
    row = next(r for r in model["figures"]["localisation"] if r["module"] == "model.layers.0.mlp.experts")
    assert row["routing_inputs"].startswith(detail)


def test_a_mapped_module_the_port_never_calls_keeps_its_row(make_project):
    project = make_project("qwen3")
    project.replace(
        "qwen3/modeling_qwen3.py",
        "        q = self.q_norm(self.q_proj(hidden_states).view(heads)).transpose(1, 2)\n",
        "        q = self.q_proj(hidden_states).view(heads).transpose(1, 2)\n",
    )
    project.run("-k", "model and not bfloat16")
    model = project.stage("model")
    assert model["status"] == "failed"
    rows = {r["module"]: r for r in model["figures"]["localisation"]}
    assert rows["model.layers.0.self_attn.q_norm"]["status"] == "the port never called it"
    assert rows["model.layers.0.self_attn.k_norm"]["ok"] is True
    assert "mapped modules the port never called: model.layers.0.self_attn.q_norm" in model["message"]
    assert "not compared: the port never called it" in model["message"]
    assert model["figures"]["first_divergence"] == "model.layers.0.self_attn"
