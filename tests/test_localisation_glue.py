"""Model localisation when the fault is in the glue between mapped modules: the first divergent module
is the one whose input the glue feeds, and the message says its input already differs, pointing at the
code before it rather than at the module."""

from __future__ import annotations

ATTENTION_RESIDUAL_DROPPED = (
    "llama/modeling_llama.py",
    "        hidden_states = hidden_states + self.self_attn(\n",
    "        hidden_states = self.self_attn(\n",
)


def test_a_dropped_attention_residual_is_placed_before_the_norm_it_feeds(port_project):
    port_project.replace(*ATTENTION_RESIDUAL_DROPPED, what="attention residual dropped")
    port_project.run("-k", "model or post_attention_norm-layer0")
    statuses = port_project.statuses()
    # the norm itself is right: fed HF's input, it matches
    assert statuses["component[post_attention_norm-layer0]"] == "passed"
    assert statuses["component[post_attention_norm-layer0-bfloat16]"] == "passed"
    for stage_id, figure in (("model", "rel_fro "), ("model[bfloat16]", "R ")):
        stage = port_project.stage(stage_id)
        assert stage["status"] == "failed", stage_id
        assert stage["figures"]["first_divergence"] == "model.layers.0.post_attention_layernorm"
        first = next(
            row
            for row in stage["figures"]["localisation"]
            if row["module"] == stage["figures"]["first_divergence"]
        )
        assert first["input_diverges"].startswith(figure), first
        assert (
            "model.layers.0.post_attention_layernorm: its input already differs from HF's ("
            + first["input_diverges"]
            + ") while no module compared before it diverges"
        ) in stage["message"]
        assert "(its input already differs)" in stage["message"]
        assert stage["figures"]["likely_cause"]["signature"] == "stage=model kind=glue"
        assert stage["message"].endswith("(kb/accuracy_debugging.md)")


def test_a_module_at_fault_is_not_said_to_have_a_differing_input(port_project):
    port_project.plant("swapped_gate_up")
    port_project.run("-k", "model")
    for stage_id in ("model", "model[bfloat16]"):
        stage = port_project.stage(stage_id)
        assert stage["figures"]["first_divergence"] == "model.layers.0.mlp"
        assert not any("input_diverges" in row for row in stage["figures"]["localisation"])
        assert "its input already differs" not in stage["message"]
