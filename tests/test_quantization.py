"""Quantised tiny checkpoints (issue 6): MXFP4 in the layout of the real GPT-OSS checkpoints and INT8
weight-only per output channel. Quantise -> dequantise stays within each format's rounding error; the float
reference is the dequantised model; each port's conversion reproduces that reference exactly."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from pytest_autoport.errors import AutoportError  # noqa: E402
from pytest_autoport.quantization import (  # noqa: E402
    FP4_E2M1,
    dequantized_state_dict,
    int8_dequantize,
    int8_quantize,
    mxfp4_dequantize,
    mxfp4_quantize,
    quantize_checkpoint,
    reference_loader,
)

GRID = torch.tensor(FP4_E2M1)


def _save(model_cls, config, folder):
    torch.manual_seed(0)
    model = model_cls(config).eval()
    with torch.no_grad():  # HF initialises biases to zero: give them values, as training would
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0, 0.1)
    model.save_pretrained(folder)
    return model.state_dict()


@pytest.fixture(scope="module")
def gpt_oss_folder(tmp_path_factory):
    config = transformers.AutoConfig.for_model(
        "gpt_oss", vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_local_experts=4,
        num_experts_per_tok=2, sliding_window=8, max_position_embeddings=131072,
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("gpt_oss")
    original = _save(transformers.GptOssForCausalLM, config, folder)
    quantize_checkpoint(folder, "mxfp4", config)
    return folder, config, original


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    # GQA and an MLP wider than the model: every quantised matrix but q_proj / o_proj is non-square
    config = transformers.AutoConfig.for_model(
        "llama", vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("llama_int8")
    original = _save(transformers.LlamaForCausalLM, config, folder)
    quantize_checkpoint(folder, "int8", config)
    return folder, config, original


# -- MXFP4 -------------------------------------------------------------------------------------------
def test_mxfp4_rounds_each_value_to_the_nearest_e2m1_value_of_its_block_scale():
    torch.manual_seed(0)
    weight = torch.randn(8, 6, 128) * torch.logspace(-6, 2, 8)[:, None, None]
    weight[0, 0, :32] = 0.0  # an all-zero block
    blocks, scales = mxfp4_quantize(weight)
    assert blocks.shape == (8, 6, 4, 16) and blocks.dtype == torch.uint8
    assert scales.shape == (8, 6, 4) and scales.dtype == torch.uint8
    restored = mxfp4_dequantize(blocks, scales)
    assert restored.shape == weight.shape

    scale = torch.exp2(scales.float() - 127).repeat_interleave(32, dim=-1)
    magnitude = weight.abs() / scale
    assert magnitude.max() <= 6  # the block scale never clips
    nearest = (magnitude[..., None] - GRID).abs().min(dim=-1).values
    assert torch.allclose((restored - weight).abs() / scale, nearest, rtol=0, atol=1e-6)
    assert (restored * weight >= 0).all()
    assert torch.equal(restored[0, 0, :32], torch.zeros(32))
    rel = (restored - weight).norm() / weight.norm()
    assert rel < 0.15  # about 12% for Gaussian blocks: 3 bits of magnitude

    # representable values come back exactly
    assert torch.equal(mxfp4_dequantize(*mxfp4_quantize(restored)), restored)


def test_mxfp4_layout_nibble_order_and_ties():
    values = torch.zeros(32)
    values[0], values[1], values[2], values[3] = 0.5, -6.0, 1.25, 2.5  # ties: 1.25 -> 1.0 (even), 2.5 -> 2.0
    blocks, scales = mxfp4_quantize(values)
    assert scales.item() == 127  # max 6 fits e2m1 unscaled
    assert blocks[0, 0].item() == 0xF1  # element 0 (code 1) in the low nibble, element 1 (code 15) high
    assert mxfp4_dequantize(blocks, scales)[:4].tolist() == [0.5, -6.0, 1.0, 2.0]


def test_mxfp4_dequantisation_agrees_with_transformers(gpt_oss_folder):
    from safetensors.torch import load_file
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    folder, _, _ = gpt_oss_folder
    tensors = load_file(folder / "model.safetensors")
    for proj in ("gate_up_proj", "down_proj"):
        blocks = tensors[f"model.layers.0.mlp.experts.{proj}_blocks"]
        scales = tensors[f"model.layers.0.mlp.experts.{proj}_scales"]
        theirs = convert_moe_packed_tensors(blocks, scales, dtype=torch.float32)
        assert torch.equal(mxfp4_dequantize(blocks, scales).transpose(-1, -2), theirs)


def test_mxfp4_checkpoint_has_the_real_layout(gpt_oss_folder):
    from safetensors.torch import load_file

    folder, config, original = gpt_oss_folder
    tensors = load_file(folder / "model.safetensors")
    prefix = "model.layers.1.mlp.experts."
    experts, hidden, inter = 4, 64, 96
    assert tensors[prefix + "gate_up_proj_blocks"].shape == (experts, 2 * inter, hidden // 32, 16)
    assert tensors[prefix + "gate_up_proj_scales"].shape == (experts, 2 * inter, hidden // 32)
    assert tensors[prefix + "down_proj_blocks"].shape == (experts, hidden, inter // 32, 16)
    assert tensors[prefix + "down_proj_scales"].shape == (experts, hidden, inter // 32)
    assert prefix + "gate_up_proj" not in tensors and prefix + "down_proj" not in tensors
    assert torch.equal(tensors[prefix + "gate_up_proj_bias"], original[prefix + "gate_up_proj_bias"])
    assert tensors["model.layers.1.mlp.router.weight"].dtype == torch.float32
    quant = json.loads((folder / "config.json").read_text())["quantization_config"]
    assert quant["quant_method"] == "mxfp4" and "model.layers.*.mlp.router" in quant["modules_to_not_convert"]

    floats = dequantized_state_dict(folder)
    for proj in ("gate_up_proj", "down_proj"):
        rel = (floats[prefix + proj] - original[prefix + proj]).norm() / original[prefix + proj].norm()
        assert 0 < rel < 0.15


def test_mxfp4_reference_is_the_dequantised_model_and_the_port_matches_it(gpt_oss_folder):
    from neuron_port.gpt_oss.modeling_gpt_oss import NeuronGptOssForCausalLM
    from pytest_autoport.checkpoint import load_state_dict

    folder, config, _ = gpt_oss_folder
    loader = reference_loader(folder)
    assert loader is not None
    model = loader(transformers.GptOssForCausalLM, folder, torch.float32)
    assert getattr(model.config, "quantization_config", None) is None  # a plain float model
    reference = model.state_dict()
    floats = dequantized_state_dict(folder)
    assert floats and all(torch.equal(reference[key], floats[key]) for key in floats)

    converted = NeuronGptOssForCausalLM.convert_hf_to_neuron_state_dict(load_state_dict(folder), config)
    assert converted.keys() == reference.keys()
    assert all(torch.equal(converted[key], reference[key]) for key in reference)


# -- INT8 --------------------------------------------------------------------------------------------
def test_int8_round_trip_is_within_half_a_step_per_output_channel():
    torch.manual_seed(0)
    weight = torch.randn(48, 80) * torch.logspace(-4, 1, 48)[:, None]
    weight[3] = 0.0
    q, scale = int8_quantize(weight)
    assert q.dtype == torch.int8 and q.shape == weight.shape
    assert scale.dtype == torch.float32 and scale.shape == (48,)
    assert q.abs().max() == 127 and q.min() >= -127
    assert torch.allclose(scale, weight.abs().amax(dim=1) / 127)
    restored = int8_dequantize(q, scale)
    error = (restored - weight).abs()
    assert (error <= scale[:, None] / 2 * (1 + 1e-5)).all()
    assert torch.equal(restored[3], torch.zeros(80))
    assert (restored - weight).norm() / weight.norm() < 0.01
    # a per-input-channel scale is a different matrix: the two dequantisations do not agree
    square_q, square_scale = int8_quantize(weight[:, :48])
    assert not torch.allclose(
        int8_dequantize(square_q, square_scale), square_q.float() * square_scale[None, :]
    )


def test_int8_checkpoint_layout(llama_folder):
    from safetensors.torch import load_file

    folder, _, original = llama_folder
    tensors = load_file(folder / "model.safetensors")
    quantised = [k for k, v in tensors.items() if v.dtype == torch.int8]
    assert len(quantised) == 2 * 7  # q, k, v, o, gate, up, down in each layer
    for key in quantised:
        assert tensors[f"{key}_scale"].shape == (original[key].shape[0],)
        assert tensors[f"{key}_scale"].dtype == torch.float32
    for key in (
        "model.embed_tokens.weight",
        "lm_head.weight",
        "model.norm.weight",
        "model.layers.0.input_layernorm.weight",
    ):
        assert torch.equal(tensors[key], original[key])
    assert tensors["model.layers.0.self_attn.k_proj.weight"].shape == (32, 64)
    quant = json.loads((folder / "config.json").read_text())["quantization_config"]
    assert quant["quant_method"] == "autoport_int8" and quant["granularity"] == "per_output_channel"

    floats = dequantized_state_dict(folder)
    assert floats.keys() == original.keys()
    for key in quantised:
        assert (floats[key] - original[key]).abs().max() <= tensors[f"{key}_scale"].max() / 2 * (1 + 1e-5)


def test_int8_port_conversion_equals_the_reference_dequantisation(llama_folder):
    from neuron_port.int8.modeling_int8_llama import NeuronInt8LlamaForCausalLM
    from pytest_autoport.checkpoint import load_state_dict

    folder, config, _ = llama_folder
    reference = reference_loader(folder)(transformers.LlamaForCausalLM, folder, torch.float32)
    assert reference.config._attn_implementation == "eager"
    expected = reference.state_dict()
    converted = NeuronInt8LlamaForCausalLM.convert_hf_to_neuron_state_dict(load_state_dict(folder), config)
    assert converted.keys() == expected.keys()
    assert all(
        converted[key].dtype == torch.float32 and torch.equal(converted[key], expected[key])
        for key in expected
    )
    ids = torch.tensor([[1, 5, 9, 2]])
    with torch.no_grad():
        assert torch.isfinite(reference(ids).logits).all()


def test_reference_loader_only_for_quantised_folders(tmp_path):
    assert reference_loader(tmp_path) is None
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert reference_loader(tmp_path) is None
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "gptq"}}))
    with pytest.raises(AutoportError, match="gptq"):
        reference_loader(tmp_path)


def test_unknown_scheme_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown quantisation scheme 'nf4'"):
        quantize_checkpoint(tmp_path, "nf4", None)
