"""The Mistral port end to end (sliding-window attention, window 8, shorter than every prompt): the
correct port passes every stage, generating past the window; a port that ignores the window (a full
causal mask) fails at attention and the model check localises it there."""

from __future__ import annotations

from tests.helpers import LLAMA_LAYER_COMPONENTS, decoder_components

FILE = "mistral/modeling_mistral.py"
COMPONENTS = decoder_components(*LLAMA_LAYER_COMPONENTS)
WINDOWED = "window=self.sliding_window)"
FULL_CAUSAL = "window=None)"


def test_correct_port_passes_every_stage(make_project):
    project = make_project("mistral")
    project.assert_passes_every_stage(project.run(), COMPONENTS)


def test_ignored_window_fails_at_attention(make_project):
    project = make_project("mistral")
    project.replace(FILE, WINDOWED, FULL_CAUSAL)
    project.assert_caught(
        project.run("-k", "not bfloat16"),
        failing=("attention-layer0",),
        passing=("mlp-layer0",),
        first_divergent="model.layers.0.self_attn",
        failing_exactly=(
            *(f"component[{name}-layer{i}]" for name in ("attention", "decoder_layer") for i in (0, 1)),
            "model",
        ),
    )
