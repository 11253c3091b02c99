"""Llama from an INT8 weight-only checkpoint end to end: the correct port (the Llama port with a
dequantising conversion) passes every stage; a scale applied per input channel instead of per output
channel passes the weights stage (names and shapes are right) and fails at the first component that
uses a quantised weight."""

from __future__ import annotations

from tests.helpers import LLAMA_LAYER_COMPONENTS, decoder_components

COMPONENTS = decoder_components(*LLAMA_LAYER_COMPONENTS)


def test_correct_port_passes_every_stage(make_project):
    project = make_project("llama_int8")
    figures = project.assert_passes_every_stage(project.run(), COMPONENTS)
    assert figures["model"]["rel_fro"] < 1e-6  # the reference holds exactly the dequantised weights


def test_scale_per_input_channel_fails_at_attention(make_project):
    project = make_project("llama_int8")
    project.replace(
        "int8/modeling_int8_llama.py",
        "return weight.to(torch.float32) * scale[:, None]",
        "return weight.to(torch.float32) * scale[None, :]",
    )
    project.assert_caught(
        project.run("-k", "not bfloat16"),
        failing=("attention-layer0", "mlp-layer0"),
        passing=("input_norm-layer0", "embedding"),
        first_divergent="model.layers.0.self_attn",
        failing_exactly=(
            *(
                f"component[{name}-layer{i}]"
                for name in ("attention", "mlp", "decoder_layer")
                for i in (0, 1)
            ),
            "model",
        ),
    )
