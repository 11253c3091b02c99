"""The Mistral port end to end (sliding-window attention, window 8, shorter than every prompt): the
correct port passes every stage, generating past the window; a port that ignores the window (a full
causal mask) fails at attention and the model check localises it there."""

from __future__ import annotations

FILE = "mistral/modeling_mistral.py"
COMPONENTS = [
    "embedding",
    *(
        f"{name}-layer{i}"
        for name in ("input_norm", "attention", "post_attention_norm", "mlp", "decoder_layer")
        for i in (0, 1)
    ),
    "norm",
    "lm_head",
]
ALL_STAGES = (
    ["env", "weights"]
    + [f"component[{c}]" for c in COMPONENTS]
    + [f"component[{c}-bfloat16]" for c in COMPONENTS]
    + ["model", "model[bfloat16]", "compile", "generate", "golden"]
)
WINDOWED = "window=self.sliding_window)"
FULL_CAUSAL = "window=None)"


def test_correct_port_passes_every_stage(make_project):
    project = make_project("mistral")
    result = project.run()
    result.assert_outcomes(passed=len(ALL_STAGES))
    assert result.ret == 0
    data = project.results()
    assert data["passed"] is True
    assert [s["id"] for s in data["stages"]] == ALL_STAGES
    figures = {s["id"]: s["figures"] for s in data["stages"]}
    assert figures["golden"]["token_match"] >= 0.95


def test_ignored_window_fails_at_attention(make_project):
    project = make_project("mistral")
    project.replace(FILE, WINDOWED, FULL_CAUSAL)
    result = project.run("-k", "not bfloat16")
    assert result.ret == 1
    statuses = project.statuses()
    assert statuses["weights"] == "passed"
    assert statuses["component[attention-layer0]"] == "failed"
    assert statuses["component[mlp-layer0]"] == "passed"
    assert statuses["model"] == "failed"
    assert all(statuses[s] == "skipped" for s in ("compile", "generate", "golden"))
    stages = {s["id"]: s for s in project.results()["stages"]}
    assert "attention (layer 0) differs" in stages["component[attention-layer0]"]["message"]
    assert stages["model"]["figures"]["first_divergence"] == "model.layers.0.self_attn"
    assert "first divergent module: model.layers.0.self_attn" in stages["model"]["message"]
    assert "Traceback" not in result.stdout.str()
