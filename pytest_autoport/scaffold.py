"""``autoport scaffold MODEL --name NAME [--target torch|nxdi]``: a spec and a port skeleton for an
architecture, from its analysis. Writes ``port_specs/NAME.toml`` and ``neuron_port/NAME/``; never
overwrites either. Decoder-only models get a torch or an NxDI port; encoder-decoders of T5's layout a
torch seq2seq port."""

from __future__ import annotations

import json
import re
from pathlib import Path

from .errors import AutoportError

NAME = re.compile(r"[a-z_][a-z0-9_]*")
# port component -> HF module path; kept when the model has the module
COMPONENTS = (
    ("embedding", "model.embed_tokens"),
    ("input_norm", "model.layers.{i}.input_layernorm"),
    ("attention", "model.layers.{i}.self_attn"),
    ("post_attention_norm", "model.layers.{i}.post_attention_layernorm"),
    ("mlp", "model.layers.{i}.mlp"),
    ("decoder_layer", "model.layers.{i}"),
    ("norm", "model.norm"),
    ("lm_head", "lm_head"),
)
# NxDI's attention base names the per-head q/k norms q_layernorm / k_layernorm
NXDI_COMPONENTS = COMPONENTS[:3] + (
    ("q_norm", "model.layers.{i}.self_attn.q_norm", "layers.{i}.self_attn.q_layernorm"),
    ("k_norm", "model.layers.{i}.self_attn.k_norm", "layers.{i}.self_attn.k_layernorm"),
)
# T5's layout: component, HF module, how the port module is called
SEQ2SEQ_COMPONENTS = (
    ("embedding", "encoder.embed_tokens", ""),
    ("encoder_attention", "encoder.block.{i}.layer.0.SelfAttention", "hidden_positions"),
    ("encoder_ff_norm", "encoder.block.{i}.layer.1.layer_norm", ""),
    ("encoder_mlp", "encoder.block.{i}.layer.1.DenseReluDense", ""),
    ("encoder_layer", "encoder.block.{i}", "hidden_positions"),
    ("encoder_norm", "encoder.final_layer_norm", ""),
    ("decoder_self_attention", "decoder.block.{i}.layer.0.SelfAttention", "hidden_positions"),
    ("cross_attention_norm", "decoder.block.{i}.layer.1.layer_norm", ""),
    ("cross_attention", "decoder.block.{i}.layer.1.EncDecAttention", "hidden_encoder"),
    ("decoder_mlp", "decoder.block.{i}.layer.2.DenseReluDense", ""),
    ("decoder_layer", "decoder.block.{i}", "hidden_positions_encoder"),
    ("decoder_norm", "decoder.final_layer_norm", ""),
    ("lm_head", "lm_head", ""),
)
# a tiny model's sizes; only the keys the architecture's config has are written
TINY = {
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 128,
    "moe_intermediate_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "head_dim": 16,
    "max_position_embeddings": 128,
    "tie_word_embeddings": False,
}
SEQ2SEQ_TINY = {
    "vocab_size": 512,
    "d_model": 64,
    "d_kv": 16,
    "d_ff": 128,
    "num_layers": 2,
    "num_decoder_layers": 2,
    "num_heads": 4,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "dropout_rate": 0.0,
}
PROMPTS = (
    "The lighthouse keeper climbed the spiral stairs",
    "To bake a loaf of bread, mix flour, water,",
)


def scaffold(
    model: str, name: str, root: Path, target: str = "torch", overrides: dict | None = None
) -> list[Path]:
    from .analyze import analyze, build_on_meta, load_config

    if not NAME.fullmatch(name):
        raise AutoportError(
            f"--name {name!r}: use lower-case letters, digits and '_' (a Python package name)"
        )
    if target not in ("torch", "nxdi"):
        raise AutoportError(f"--target {target!r}: expected 'torch' or 'nxdi'")
    spec_path, port_dir = root / "port_specs" / f"{name}.toml", root / "neuron_port" / name
    for path in (spec_path, port_dir):
        if path.exists():
            raise AutoportError(f"{path} exists: scaffold never overwrites; pick another --name or remove it")
    config = load_config(model, overrides)
    seq2seq = bool(getattr(config, "is_encoder_decoder", False))
    if seq2seq and target == "nxdi":
        raise AutoportError(
            f"{config.model_type} is an encoder-decoder model: the nxdi target runs decoder-only "
            "models; scaffold it with --target torch"
        )
    hf_model = build_on_meta(config)
    report = analyze(config, hf_model)
    # every path, shared modules included (T5's encoder.embed_tokens is its shared embedding)
    modules = {path for path, _ in hf_model.named_modules(remove_duplicate=False)}
    hf_class = type(hf_model).__name__
    if seq2seq and "encoder.block.0.layer.0.SelfAttention" not in modules:
        raise AutoportError(
            f"{config.model_type} ({hf_class}) is an encoder-decoder model without T5's layout "
            "(encoder.block.N.layer...): scaffold writes T5-layout seq2seq ports; start from "
            "neuron_port/t5/ and kb/porting_contract.md"
        )
    prefix = re.sub(r"For(CausalLM|ConditionalGeneration)$", "", hf_class)
    port_class = f"Neuron{hf_class}"
    if seq2seq:
        components = [(n, p, {"call": c} if c else {}) for n, p, c in SEQ2SEQ_COMPONENTS if _has(p, modules)]
        components[0][2]["port_module"] = "shared"  # the port keeps one embedding for both stacks
    elif target == "nxdi":
        table = [(n, p, p.removeprefix("model.")) for n, p in COMPONENTS[:3]]
        table += list(NXDI_COMPONENTS[3:]) + [(n, p, p.removeprefix("model.")) for n, p in COMPONENTS[3:]]
        components = [(n, p, {"port_module": m}) for n, p, m in table if _has(p, modules)]
    else:
        components = [(n, p, {}) for n, p in COMPONENTS if _has(p, modules)]
    folder = Path(model).expanduser()
    spec_text = _spec_text(
        name, hf_class, model, folder, config, port_class, components, overrides or {}, report, target
    )
    port_text = _port_text(hf_class, prefix, port_class, report, hf_model, config, modules, target)
    port_dir.mkdir(parents=True)
    (port_dir / "__init__.py").write_text("")
    (port_dir / f"modeling_{name}.py").write_text(port_text)
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(spec_text)
    return [spec_path, port_dir / f"modeling_{name}.py"]


def _has(path: str, modules: set[str]) -> bool:
    return path.format(i=0) in modules


def _port_text(hf_class, prefix, port_class, report, hf_model, config, modules, target) -> str:
    from . import scaffold_ports

    if report["architecture"] == "encoder_decoder":
        return scaffold_ports.seq2seq_port(hf_class, prefix, report, modules)
    if target == "nxdi":
        todo = scaffold_ports.nxdi_todo(report, hf_model, config)
        return scaffold_ports.nxdi_port(hf_class, prefix, port_class, report, todo)
    return scaffold_ports.torch_port(hf_class, prefix, port_class, report)


def _toml(value) -> str:
    """A TOML value: strings, numbers, booleans and arrays as JSON writes them; tables inline."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value)


def _spec_text(
    name, hf_class, model, folder, config, port_class, components, overrides, report, target
) -> str:
    own = folder.is_dir()
    weights = str(folder.resolve()) if own else f"agent_artifacts/data/{name}"
    seq2seq = report["architecture"] == "encoder_decoder"
    command = f"autoport scaffold {model} --name {name}" + (" --target nxdi" if target == "nxdi" else "")
    lines = [
        f"# Port spec scaffolded by `{command}`.",
        "[model]",
        f"name = {_toml(name)}",
        f"hf_model_class = {_toml(hf_class)}",
        f"model_id = {_toml(str(model))}",
        f"weights_path = {_toml(weights)}",
        "",
        "[port]",
        f'model_class = "neuron_port/{name}/modeling_{name}.py:{port_class}"',
    ]
    if seq2seq:
        lines.append('architecture = "encoder_decoder"')
    lines += [
        f"target = {_toml(target)}",
        "max_seq_len = 64",
        "context_buckets = [16, 32, 64]",
        f"token_generation_buckets = {'[16, 64]' if seq2seq else '[32, 64]'}",
        "",
        "[validation]",
        "prompts = [" + ", ".join(_toml(p) for p in PROMPTS) + "]",
        "num_tokens_to_check = 16",
        "",
    ]
    for comp, path, extra in components:
        lines += ["[[components]]", f"name = {_toml(comp)}", f"hf_module = {_toml(path)}"]
        lines += [f"{key} = {_toml(value)}" for key, value in extra.items()]
        lines.append("")
    if not own:
        lines += ["# the tiny checkpoint built when weights_path does not exist", "[tiny]"]
        lines.append(f"model_type = {_toml(config.model_type)}")
        tiny = _seq2seq_tiny(config, overrides) if seq2seq else _tiny(config, report, overrides)
        for key, value in tiny.items():
            lines.append(f"{key} = {_toml(value)}")
    return "\n".join(lines) + "\n"


# the tiny builder sets the special token ids from its own tokenizer
_SPECIAL = ("model_type", "pad_token_id", "bos_token_id", "eos_token_id")


def _tiny(config, report, overrides) -> dict:
    tiny = {k: v for k, v in TINY.items() if hasattr(config, k) and getattr(config, k) is not None}
    if hasattr(config, "num_key_value_heads"):
        kind = report["attention"]["kind"]
        tiny["num_key_value_heads"] = {"MHA": 4, "MQA": 1}.get(kind, 2)
    window = getattr(config, "sliding_window", None)
    if window:
        tiny["sliding_window"] = 32  # below max_seq_len, so the window is exercised
    tiny.update({k: v for k, v in overrides.items() if k not in _SPECIAL and v is not None})
    return tiny


def _seq2seq_tiny(config, overrides) -> dict:
    tiny = {k: v for k, v in SEQ2SEQ_TINY.items() if hasattr(config, k)}
    tiny["feed_forward_proj"] = getattr(config, "feed_forward_proj", "relu")
    tiny["tie_word_embeddings"] = bool(getattr(config, "tie_word_embeddings", True))
    tiny["decoder_start_token_id"] = 0  # the decoder starts from <pad>, as T5's does
    tiny.update({k: v for k, v in overrides.items() if k not in _SPECIAL and v is not None})
    return tiny
