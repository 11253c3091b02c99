"""The port file ``autoport scaffold`` writes: a template filled from the architecture report, with
what no template covers listed as TODO(autoport) items."""

from __future__ import annotations

from importlib import resources

from .analyze import MATH_KEYS

_SPLIT_IN_CONVERSION = ("fused qkv_proj", "fused gate_up_proj")


def _template(name: str) -> str:
    return resources.files("pytest_autoport").joinpath(f"templates/{name}").read_text()


def _bias_flags(report) -> dict:
    biases = set(report["biases"])
    return {
        "qkv_bias": bool(biases & {"q_proj", "k_proj", "v_proj", "qkv_proj"}),
        "o_bias": "o_proj" in biases,
        "mlp_bias": bool(biases & {"gate_proj", "up_proj", "down_proj", "gate_up_proj"}),
    }


def _docstring_todo(items) -> str:
    todo = "".join(f"\nTODO(autoport): {item}" for item in items)
    return todo + ("\n" if todo else "")


def torch_port(hf_class, prefix, port_class, report) -> str:
    items = [
        item
        for item in report["custom_work"]
        if not item.startswith(_SPLIT_IN_CONVERSION) and "partial RoPE" not in item
    ]
    return _template("torch_port.py.txt").format(
        hf_class=hf_class,
        Prefix=prefix,
        port_class=port_class,
        todo=_docstring_todo(items),
        **_bias_flags(report),
    )


def seq2seq_port(hf_class, prefix, report, modules) -> str:
    items = []
    if "decoder.block.1.layer.0.SelfAttention.relative_attention_bias" in modules:
        items.append("every layer has its own relative_attention_bias: the skeleton shares the first layer's")
    return _template("seq2seq_port.py.txt").format(
        hf_class=hf_class, Prefix=prefix, todo=_docstring_todo(items)
    )


def nxdi_todo(report, hf_model, config) -> list[str]:
    """What the NxDI skeleton (pre-norm, gated MLP, NxDI's attention base and plain RoPE) lacks."""
    items = [item for item in report["custom_work"] if item.startswith("MLA")]
    positional = report["positional"]
    if positional["partial_rotary_factor"] not in (None, 1, 1.0):
        items.append(
            f"partial RoPE (partial_rotary_factor {positional['partial_rotary_factor']}): NxDI's "
            "attention base rotates the whole head; rotate only the first part of it"
        )
    scaling = positional["scaling"]
    if scaling == "yarn":
        items.append(
            "YaRN RoPE scaling: the skeleton's RotaryEmbedding applies none; NxDI's DeepSeek port "
            "has a YaRN one (models/deepseek/rope_util.py)"
        )
    elif scaling not in ("default", None):
        items.append(
            f"RoPE scaling {scaling!r}: the skeleton's RotaryEmbedding applies none; NxDI's Llama "
            "port has a llama3-scaled one (models/llama/modeling_llama.py)"
        )
    if report["moe"]:
        moe = report["moe"]
        items.append(
            f"mixture of experts ({moe['experts']} experts, top {moe['top_k']}): replace the MLP with "
            "NxDI's initialize_moe_module (modules/moe_v2) and convert the expert weights to its layout"
        )
    elif not report["mlp"]["kind"].startswith("gated"):
        items.append(f"MLP {report['mlp']['kind']}: the skeleton's MLP is gated (gate, up, down)")
    if any("Gemma" in c for c in report["norm"]["classes"]):
        items.append("Gemma RMSNorm scales by (1 + weight): the skeleton's norm scales by weight")
    if report["norm"]["placement"] != "pre-norm":
        items.append(
            f"norm placement {report['norm']['placement']}: the skeleton's decoder layer is pre-norm"
        )
    layers = report["sliding_window"]["layers"]
    if layers and layers != "all":
        items.append(f"sliding window on layers {layers} only: the skeleton gives every layer full attention")
    head_dim = report["attention"]["head_dim"]
    q_norm = _module(hf_model, "model.layers.0.self_attn.q_norm")
    if q_norm is not None and getattr(q_norm, "weight", None) is not None:
        if q_norm.weight.shape[-1] != head_dim:
            items.append(
                f"q/k norm over the whole projection ({q_norm.weight.shape[-1]} wide): NxDI's "
                f"q_layernorm / k_layernorm normalise each head ({head_dim} wide)"
            )
    c = config.get_text_config() if hasattr(config, "get_text_config") else config
    handled = ("attention_bias", "mlp_bias")  # the biases the analysis found are built
    items += [
        f"config key {key!r} changes the math: the skeleton ignores it"
        for key in MATH_KEYS
        if key not in handled and getattr(c, key, None) not in (None, False, 0)
    ]
    return items


def _module(model, path):
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def nxdi_port(hf_class, prefix, port_class, report, todo) -> str:
    rows = "\n".join(f"  {m['hf_module']} [{m['hf_class']}] -> {m['nxdi']}" for m in report["modules"])
    window = report["sliding_window"]
    return _template("nxdi_port.py.txt").format(
        hf_class=hf_class,
        Prefix=prefix,
        port_class=port_class,
        module_map=rows,
        todo="".join(f"\n    {item!r}," for item in todo) + ("\n" if todo else ""),
        qk_norm=report["qk_norm"] and not any("q/k norm" in t for t in todo),
        sliding_window='getattr(config, "sliding_window", None)' if window["layers"] == "all" else "None",
        **_bias_flags(report),
    )
