"""``autoport scaffold MODEL --name NAME``: a spec and a port skeleton for an architecture, from its
analysis. Writes ``port_specs/NAME.toml`` and ``neuron_port/NAME/``; never overwrites either."""

from __future__ import annotations

import json
import re
from importlib import resources
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
    if target != "torch":
        raise AutoportError(
            "scaffold --target nxdi is not written yet: start from neuron_port/llama_nxdi/ (a port written "
            "the NxDI way) and kb/nxdi_target.md"
        )
    spec_path, port_dir = root / "port_specs" / f"{name}.toml", root / "neuron_port" / name
    for path in (spec_path, port_dir):
        if path.exists():
            raise AutoportError(f"{path} exists: scaffold never overwrites; pick another --name or remove it")
    config = load_config(model, overrides)
    if getattr(config, "is_encoder_decoder", False):
        raise AutoportError(
            f"{config.model_type} is an encoder-decoder model: scaffold writes decoder-only ports; "
            "start from neuron_port/t5/ and kb/porting_contract.md"
        )
    hf_model = build_on_meta(config)
    report = analyze(config, hf_model)
    modules = {path for path, _ in hf_model.named_modules()}
    components = [(n, p) for n, p in COMPONENTS if p.format(i=0) in modules]
    hf_class = type(hf_model).__name__
    prefix = hf_class.removesuffix("ForCausalLM")
    port_class = f"Neuron{hf_class}"
    folder = Path(model).expanduser()
    spec_text = _spec_text(
        name, hf_class, model, folder, config, port_class, components, overrides or {}, report
    )
    port_text = _port_text(hf_class, prefix, port_class, report)
    port_dir.mkdir(parents=True)
    (port_dir / "__init__.py").write_text("")
    (port_dir / f"modeling_{name}.py").write_text(port_text)
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(spec_text)
    return [spec_path, port_dir / f"modeling_{name}.py"]


def _toml(value) -> str:
    """A TOML value: strings, numbers, booleans and arrays as JSON writes them; tables inline."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value)


def _spec_text(name, hf_class, model, folder, config, port_class, components, overrides, report) -> str:
    own = folder.is_dir()
    weights = str(folder.resolve()) if own else f"agent_artifacts/data/{name}"
    lines = [
        f"# Port spec scaffolded by `autoport scaffold {model} --name {name}`.",
        "[model]",
        f"name = {_toml(name)}",
        f"hf_model_class = {_toml(hf_class)}",
        f"model_id = {_toml(str(model))}",
        f"weights_path = {_toml(weights)}",
        "",
        "[port]",
        f'model_class = "neuron_port/{name}/modeling_{name}.py:{port_class}"',
        'target = "torch"',
        "max_seq_len = 64",
        "context_buckets = [16, 32, 64]",
        "token_generation_buckets = [32, 64]",
        "",
        "[validation]",
        "prompts = [" + ", ".join(_toml(p) for p in PROMPTS) + "]",
        "num_tokens_to_check = 16",
        "",
    ]
    for comp, path in components:
        lines += ["[[components]]", f"name = {_toml(comp)}", f"hf_module = {_toml(path)}", ""]
    if not own:
        lines += ["# the tiny checkpoint built when weights_path does not exist", "[tiny]"]
        lines.append(f"model_type = {_toml(config.model_type)}")
        for key, value in _tiny(config, report, overrides).items():
            lines.append(f"{key} = {_toml(value)}")
    return "\n".join(lines) + "\n"


def _tiny(config, report, overrides) -> dict:
    tiny = {k: v for k, v in TINY.items() if hasattr(config, k) and getattr(config, k) is not None}
    if hasattr(config, "num_key_value_heads"):
        kind = report["attention"]["kind"]
        tiny["num_key_value_heads"] = {"MHA": 4, "MQA": 1}.get(kind, 2)
    window = getattr(config, "sliding_window", None)
    if window:
        tiny["sliding_window"] = 32  # below max_seq_len, so the window is exercised
    # the tiny builder sets the special token ids from its own tokenizer
    special = ("model_type", "pad_token_id", "bos_token_id", "eos_token_id")
    tiny.update({k: v for k, v in overrides.items() if k not in special and v is not None})
    return tiny


def _port_text(hf_class, prefix, port_class, report) -> str:
    template = resources.files("pytest_autoport").joinpath("templates/torch_port.py.txt").read_text()
    todo = "".join(
        f"\nTODO(autoport): {item}"
        for item in report["custom_work"]
        if "split" not in item and "partial RoPE" not in item
    )
    biases = set(report["biases"])
    return template.format(
        hf_class=hf_class,
        Prefix=prefix,
        port_class=port_class,
        todo=todo + ("\n" if todo else ""),
        qkv_bias=bool(biases & {"q_proj", "k_proj", "v_proj", "qkv_proj"}),
        o_bias="o_proj" in biases,
        mlp_bias=bool(biases & {"gate_proj", "up_proj", "down_proj", "gate_up_proj"}),
    )
