"""``autoport analyze``: what an HF architecture is made of, built on the meta device (no weights
read), and which building block ports each of its modules. ``preflight`` checks the figures against a
tp degree and a sequence length."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from .errors import AutoportError

_RMSNORM = "modules.custom_calls.CustomRMSNorm"
_ROTARY = "modules.attention.utils.RotaryEmbedding"
_MOE = "modules.moe_v2.initialize_moe_module"
# HF module class name fragment -> (harness block for the torch target, NxD Inference module); the first
# fragment the class name contains wins
BLOCKS = (
    ("GemmaRMSNorm", "pytest_autoport.blocks.gemma_norm.GemmaRMSNorm", _RMSNORM),
    ("Gemma3RMSNorm", "pytest_autoport.blocks.gemma_norm.GemmaRMSNorm", _RMSNORM),
    ("RMSNorm", "pytest_autoport.blocks.norms.RMSNorm", _RMSNORM),
    ("T5LayerNorm", "pytest_autoport.blocks.norms.RMSNorm", _RMSNORM),
    ("LayerNorm", "torch.nn.LayerNorm", "torch.nn.LayerNorm"),
    ("YarnRotary", "pytest_autoport.blocks.yarn.YarnRotaryEmbedding", _ROTARY),
    ("RotaryEmbedding", "pytest_autoport.blocks.rope.RotaryEmbedding", _ROTARY),
    (
        "Attention",
        "pytest_autoport.blocks.decoder.attend + blocks.attention.KVCache",
        "modules.attention.attention_base.NeuronAttentionBase",
    ),
    ("SparseMoe", "pytest_autoport.blocks.moe.SparseMoeBlock", _MOE),
    ("MoE", "pytest_autoport.blocks.moe.SparseMoeBlock", _MOE),
    ("Experts", "pytest_autoport.blocks.moe.MoEExperts", _MOE),
    (
        "MLP",
        "pytest_autoport.blocks.decoder.SwiGLUMLP",
        "parallel_layers.ColumnParallelLinear / RowParallelLinear",
    ),
    ("DecoderLayer", "pytest_autoport.blocks.decoder.DecoderLayer", "your NeuronDecoderLayer (nn.Module)"),
    ("Router", "pytest_autoport.blocks.moe.SparseMoeBlock (its router)", _MOE),
    ("Embedding", "torch.nn.Embedding", "parallel_layers.ParallelEmbedding"),
    ("Model", "pytest_autoport.blocks.decoder.DecoderModel", "models.model_base.NeuronBaseModel"),
)
TARGETS = {"torch": 1, "nxdi": 2}


def load_config(model: str, overrides: dict | None = None):
    """A local checkpoint folder, a config.json file, or a transformers model type; never a hub id."""
    from transformers import AutoConfig

    overrides = copy.deepcopy(dict(overrides or {}))  # transformers edits nested tables in place
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise AutoportError(f"{path}: no config.json in this folder")
        return AutoConfig.from_pretrained(path, local_files_only=True, **overrides)
    if path.suffix == ".json":
        if not path.is_file():
            raise AutoportError(f"{path}: no such file")
        values = {**json.loads(path.read_text()), **overrides}
        model_type = values.pop("model_type", None)
        if not model_type:
            raise AutoportError(f"{path}: no model_type in this config")
        return AutoConfig.for_model(model_type, **values)
    try:
        return AutoConfig.for_model(model, **overrides)
    except (ValueError, KeyError):
        raise AutoportError(
            f"{model!r} is neither a folder, a config.json nor a transformers model type"
        ) from None


def build_on_meta(config):
    """The HF model with every tensor on the meta device: no memory, no weights read."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    auto = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
    with torch.device("meta"):
        return auto.from_config(config)


def _get(config, *names, default=None):
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


def _text_config(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def analyze(config, model=None) -> dict:
    """The architecture's figures, its module map and what needs custom work."""
    model = model if model is not None else build_on_meta(config)
    c = _text_config(config)
    heads = _get(c, "num_attention_heads", "num_heads", "n_head")
    kv_heads = _get(c, "num_key_value_heads", default=heads)
    hidden = _get(c, "hidden_size", "d_model")
    head_dim = _get(c, "head_dim", "d_kv", default=hidden // heads if heads else None)
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    custom = []
    if _get(c, "kv_lora_rank"):
        attention = "MLA"
        custom.append("MLA attention (low-rank q/kv projections, decoupled RoPE): no shared block")
    elif kv_heads == heads:
        attention = "MHA"
    elif kv_heads == 1:
        attention = "MQA"
    else:
        attention = "GQA"
    if "qkv_proj" in names:
        custom.append(
            "fused qkv_proj: split into q, k, v in the weight conversion (order q, k, v; sizes heads*head_dim, kv_heads*head_dim, kv_heads*head_dim)"
        )
    if "gate_up_proj" in names and not _get(c, "num_local_experts", "num_experts", "n_routed_experts"):
        custom.append(
            "fused gate_up_proj: split along the output dimension in the weight conversion (gate first, then up)"
        )
    rope = _get(c, "rope_parameters", "rope_scaling")
    rope_type = (
        (rope or {}).get("rope_type", (rope or {}).get("type", "default"))
        if isinstance(rope, dict)
        else "default"
    )
    partial = _get(
        c,
        "partial_rotary_factor",
        default=(rope or {}).get("partial_rotary_factor") if isinstance(rope, dict) else None,
    )
    if "relative_attention_bias" in names:
        positional = "relative attention bias (T5)"
    elif _get(c, "rope_theta") is not None or rope:
        positional = f"RoPE ({rope_type})"
    else:
        positional = "learned or none"
    if partial not in (None, 1, 1.0):
        custom.append(
            f"partial RoPE: only {partial} of head_dim rotates; pass rotary_dim to the rotary block"
        )
    if rope_type == "yarn":
        custom.append(
            "YaRN RoPE scaling: use pytest_autoport.blocks.yarn.YarnRotaryEmbedding and yarn_softmax_scale"
        )
    elif rope_type not in ("default", None, "llama3", "linear"):
        custom.append(f"RoPE scaling {rope_type!r}: no shared block")
    norm_classes = sorted({type(m).__name__ for m in model.modules() if "Norm" in type(m).__name__})
    placement = "pre-norm"
    if {"pre_feedforward_layernorm", "post_feedforward_layernorm"} & names:
        placement = "sandwich (pre and post norms around attention and MLP)"
    elif "input_layernorm" not in names and "post_attention_layernorm" in names:
        placement = "post-norm"
    experts = _get(c, "num_local_experts", "num_experts", "n_routed_experts")
    if experts:
        mlp = "mixture of experts" + (" with dense layers" if "gate_proj" in names else "")
    elif "gate_up_proj" in names:
        mlp = "gated (fused gate_up_proj)"
    elif "gate_proj" in names:
        mlp = "gated (gate_proj, up_proj, down_proj)"
    elif {"fc1", "fc2"} <= names or {"wi", "wo"} <= names:
        mlp = "plain two-layer"
    else:
        mlp = "unknown"
    moe = None
    if experts:
        moe = {
            "experts": experts,
            "top_k": _get(c, "num_experts_per_tok", "moe_topk"),
            "shared_experts": _get(c, "n_shared_experts", "shared_expert_intermediate_size", default=0),
            "normalise_top_k": _get(c, "norm_topk_prob", default=None),
        }
    window = _get(c, "sliding_window")
    layer_types = _get(c, "layer_types")
    sliding_layers = (
        [i for i, t in enumerate(layer_types) if "sliding" in str(t)]
        if layer_types
        else ("all" if window else [])
    )
    biases = sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, m in model.named_modules()
            if getattr(m, "bias", None) is not None and type(m).__name__ == "Linear"
        }
    )
    report = {
        "model_type": c.model_type,
        "architecture": "encoder_decoder" if getattr(config, "is_encoder_decoder", False) else "decoder",
        "hf_class": type(model).__name__,
        "layers": _get(c, "num_hidden_layers", "num_layers"),
        "hidden_size": hidden,
        "vocab_size": _get(c, "vocab_size"),
        "intermediate_size": _get(c, "intermediate_size", "d_ff"),
        "attention": {"kind": attention, "heads": heads, "kv_heads": kv_heads, "head_dim": head_dim},
        "positional": {
            "kind": positional,
            "rope_theta": _get(
                c, "rope_theta", default=(rope or {}).get("rope_theta") if isinstance(rope, dict) else None
            ),
            "scaling": rope_type,
            "partial_rotary_factor": partial,
        },
        "norm": {"classes": norm_classes, "placement": placement},
        "mlp": {"kind": mlp, "fused": sorted({"qkv_proj", "gate_up_proj"} & names)},
        "moe": moe,
        "sliding_window": {"window": window, "layers": sliding_layers},
        "qk_norm": bool({"q_norm", "k_norm", "q_layernorm", "k_layernorm"} & names),
        "biases": biases,
        "tied_embeddings": bool(_get(c, "tie_word_embeddings", default=False)),
        "quantization": _get(config, "quantization_config"),
        "modules": module_map(model),
        "custom_work": custom,
    }
    return report


def scales_in_float32(norm) -> bool:
    """Whether an HF RMSNorm multiplies by its weight before casting back (``(self.weight *
    hidden_states).to(input_dtype)``), read from its source."""
    import inspect

    try:
        source = inspect.getsource(type(norm).forward)
    except (OSError, TypeError):
        return False
    return "(self.weight*hidden_states).to(" in source.replace(" ", "")


def module_map(model) -> list[dict]:
    """Each distinct HF module class of the model (first path where it appears) and its block."""
    seen, rows = set(), []
    for path, module in model.named_modules():
        cls = type(module).__name__
        activation = type(module).__module__ in ("torch.nn.modules.activation", "transformers.activations")
        if not path or cls in seen or cls in ("ModuleList", "Linear", "Dropout") or activation:
            continue
        seen.add(cls)
        torch_block, nxdi_block = next(
            ((t, n) for fragment, t, n in BLOCKS if fragment in cls),
            ("custom: write it in the port", "custom"),
        )
        if torch_block == "pytest_autoport.blocks.norms.RMSNorm" and scales_in_float32(module):
            torch_block += "(scale_in_float32=True)"
        nxdi_block = (
            nxdi_block
            if nxdi_block.startswith(("custom", "torch", "your"))
            else f"neuronx_distributed{'_inference' if nxdi_block.startswith(('modules', 'models')) else ''}.{nxdi_block}"
        )
        rows.append({"hf_module": path, "hf_class": cls, "torch": torch_block, "nxdi": nxdi_block})
    return rows


def preflight(
    report: dict,
    tp_degree: int = 1,
    seq_len: int | None = None,
    port_text: str | None = None,
    config=None,
    ep_degree: int = 1,
) -> list[str]:
    """Problems of this architecture at ``tp_degree`` / ``ep_degree`` and ``seq_len``; empty when there
    are none. ``port_text`` (the port's sources) adds config keys that change the math but that it
    never reads."""
    problems = expert_parallel_problems(report, tp_degree, ep_degree)
    a = report["attention"]
    if tp_degree > 1:
        if a["heads"] and a["heads"] % tp_degree:
            problems.append(f"{a['heads']} attention heads do not split over tp {tp_degree}")
        kv = a["kv_heads"]
        if kv and kv % tp_degree and tp_degree % kv:
            problems.append(f"{kv} KV heads neither split over nor replicate to tp {tp_degree}")
        for key in ("vocab_size", "intermediate_size"):
            if report.get(key) and report[key] % tp_degree:
                problems.append(
                    f"{key} {report[key]} does not split over tp {tp_degree}: pad it or shard another way"
                )
    window = report["sliding_window"]["window"]
    if (
        seq_len
        and window
        and window < seq_len
        and port_text is not None
        and "sliding_window" not in port_text
    ):
        problems.append(
            f"sliding window {window} < sequence length {seq_len}, but the port never reads sliding_window"
        )
    if port_text is not None:
        for key in unread_keys(report, port_text, config):
            problems.append(f"config key {key!r} changes the model, but the port never reads it")
    return problems


def expert_parallel_problems(report: dict, tp_degree: int, ep_degree: int) -> list[str]:
    """NxDI splits the experts over ``ep_degree`` groups of ``tp_degree / ep_degree`` cores each."""
    if ep_degree <= 1:
        return []
    if not report["moe"]:
        return [f"ep_degree {ep_degree} applies to mixture-of-experts models; this one has no experts"]
    problems = []
    experts = report["moe"]["experts"]
    if experts % ep_degree:
        problems.append(f"{experts} experts do not split over ep {ep_degree}")
    if tp_degree % ep_degree:
        problems.append(
            f"tp_degree {tp_degree} is not a multiple of ep_degree {ep_degree} "
            "(each expert group gets tp/ep cores)"
        )
    return problems


# config keys that change the computation when set; the port (or a block it imports) must read them
MATH_KEYS = (
    "attn_logit_softcapping",
    "final_logit_softcapping",
    "attention_bias",
    "mlp_bias",
    "norm_topk_prob",
    "query_pre_attn_scalar",
)


def unread_keys(report: dict, port_text: str, config=None) -> list[str]:
    """Keys that are set (not None, False or 0) and that no word of the port's sources names."""
    active = set()
    if report["positional"]["partial_rotary_factor"] not in (None, 1, 1.0):
        active.add("partial_rotary_factor")
    if config is not None:
        c = _text_config(config)
        active.update(k for k in MATH_KEYS if getattr(c, k, None) not in (None, False, 0))
    return sorted(k for k in active if k not in port_text)


def format_report(report: dict) -> str:
    a, p, s = report["attention"], report["positional"], report["sliding_window"]
    lines = [
        f"{report['hf_class']} ({report['model_type']}, {report['architecture']}), {report['layers']} layers, hidden {report['hidden_size']}, vocab {report['vocab_size']}",
        f"attention     {a['kind']}: {a['heads']} heads, {a['kv_heads']} KV heads, head_dim {a['head_dim']}; qk-norm {'yes' if report['qk_norm'] else 'no'}",
        f"positional    {p['kind']}, theta {p['rope_theta']}, partial {p['partial_rotary_factor'] or 'no'}",
        f"norm          {', '.join(report['norm']['classes']) or 'none'} ({report['norm']['placement']})",
        f"mlp           {report['mlp']['kind']}, intermediate {report['intermediate_size']}",
        f"moe           {report['moe'] or 'no'}",
        f"sliding       window {s['window'] or 'none'}, layers {s['layers'] or 'none'}",
        f"biases        {', '.join(report['biases']) or 'none'}; tied embeddings {'yes' if report['tied_embeddings'] else 'no'}; quantisation {report['quantization'] or 'none'}",
        "",
        "module map (HF module -> torch block | nxdi module):",
    ]
    lines += [
        f"  {m['hf_module']} [{m['hf_class']}] -> {m['torch']} | {m['nxdi']}" for m in report["modules"]
    ]
    lines += ["", "needs custom work:" if report["custom_work"] else "needs custom work: nothing flagged"]
    lines += [f"  - {item}" for item in report["custom_work"]]
    return "\n".join(lines)
