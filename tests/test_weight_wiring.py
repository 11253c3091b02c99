"""A conversion that fills port tensors crosswise (k from v and v from k; layer 0 from layer 1 and back)
passes every count and shape check: the numeric stages catch it, and their message names the crossed
tensors instead of a metric signature's guess. Deliberate renames, tying and fused slices are not
crossed."""

from __future__ import annotations

import torch

from pytest_autoport.weight_wiring import crossed_tensors, name_signature


def _checkpoint(*keys: str) -> dict:
    return {key: torch.full((2, 2), float(i)) for i, key in enumerate(keys)}


def test_a_swapped_pair_is_named_both_ways():
    hf = _checkpoint("model.layers.0.attn.k_proj.weight", "model.layers.0.attn.v_proj.weight")
    converted = {
        "layers.0.attn.k_proj.weight": hf["model.layers.0.attn.v_proj.weight"],
        "layers.0.attn.v_proj.weight": hf["model.layers.0.attn.k_proj.weight"],
    }
    assert crossed_tensors(converted, hf) == [
        "layers.0.attn.k_proj.weight <- model.layers.0.attn.v_proj.weight"
        " (while model.layers.0.attn.k_proj.weight went to layers.0.attn.v_proj.weight)",
        "layers.0.attn.v_proj.weight <- model.layers.0.attn.k_proj.weight"
        " (while model.layers.0.attn.v_proj.weight went to layers.0.attn.k_proj.weight)",
    ]


def test_a_cycle_of_layers_is_named():
    hf = _checkpoint(*(f"model.layers.{i}.mlp.down_proj.weight" for i in range(3)))
    converted = {
        f"layers.{i}.mlp.down_proj.weight": hf[f"model.layers.{(i + 1) % 3}.mlp.down_proj.weight"]
        for i in range(3)
    }
    assert [line.split(" <- ")[0] for line in crossed_tensors(converted, hf)] == sorted(converted)


def test_renames_ties_views_and_computed_tensors_are_not_crossed():
    hf = _checkpoint(
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.qkv_proj.weight",
        "model.layers.0.mlp.up_proj.weight",
        "model.layers.0.mlp.gate_proj.weight",
    )
    qkv = hf["model.layers.0.self_attn.qkv_proj.weight"]
    converted = {
        "embed.weight": hf["model.embed_tokens.weight"],  # a port's own names
        "lm_head.weight": hf["model.embed_tokens.weight"],  # tied
        "layers.0.attn.q_proj.weight": qkv[:1],  # views of a fused tensor
        "layers.0.attn.k_proj.weight": qkv[1:],
        "layers.0.mlp.up_proj.weight": hf["model.layers.0.mlp.up_proj.weight"].t(),  # a transposed view
        "layers.0.mlp.gate_proj.weight": hf["model.layers.0.mlp.gate_proj.weight"].clone(),  # computed
    }
    assert crossed_tensors(converted, hf) == []
    # one-way: layer 0 filled from layer 1, whose own tensor stays put (the mapping check's unused key)
    hf = _checkpoint("model.layers.0.q.weight", "model.layers.1.q.weight")
    one_way = {
        "layers.0.q.weight": hf["model.layers.1.q.weight"],
        "layers.1.q.weight": hf["model.layers.1.q.weight"],
    }
    assert crossed_tensors(one_way, hf) == []


def test_name_signature_ignores_prefixes():
    assert name_signature("model.layers.3.self_attn.q_proj.weight") == name_signature(
        "decoder.layers.3.attention.q_proj.weight"
    )
    assert name_signature("model.layers.3.mlp.experts.1.w2.weight") == (("3", "1"), ("w2", "weight"))


SWAPPED_K_V = (
    "llama/modeling_llama.py",
    "        return converted\n",
    '        k, v = "model.layers.0.self_attn.k_proj.weight", "model.layers.0.self_attn.v_proj.weight"\n'
    "        converted[k], converted[v] = state_dict[v], state_dict[k]\n"
    "        return converted\n",
)


def test_swapped_k_v_is_caught_at_attention_naming_the_crossed_tensors(port_project):
    port_project.replace(*SWAPPED_K_V, what="k and v projections swapped in the conversion")
    result = port_project.run("-k", "weights or attention-layer0 or model", "--autoport-dtype=float32")
    assert result.ret == 1
    port_project.assert_failing_exactly(["component[attention-layer0]", "model"])
    crossed = port_project.stage("weights")["figures"]["crossed_tensors"]
    assert [line.split(" <- ")[0] for line in crossed] == [
        "model.layers.0.self_attn.k_proj.weight",
        "model.layers.0.self_attn.v_proj.weight",
    ]
    for stage_id in ("component[attention-layer0]", "model"):
        stage = port_project.stage(stage_id)
        assert "the weight conversion filled these port tensors crosswise" in stage["message"], stage_id
        assert crossed[0] in stage["message"] and stage["message"].endswith("(kb/weight_conversion.md)")
        assert stage["figures"]["likely_cause"]["file"] == "kb/weight_conversion.md"
        assert stage["figures"]["crossed_tensors"] == crossed
