"""Quantised checkpoints: writing tiny ones (MXFP4, INT8 weight-only) and loading their float reference.

``quantize_checkpoint`` rewrites a saved float HF folder into the quantised layout of the real
checkpoints; ``reference_loader`` tells how the HF reference loads such a folder (None: the usual
``from_pretrained``). The reference is always the float model whose weights equal the DEQUANTISED
tensors, so a port that dequantises correctly matches it exactly.

Layouts (what a port's ``convert_hf_to_neuron_state_dict`` has to undo):

``mxfp4`` (GPT-OSS, as OpenAI's checkpoints and transformers' ``integrations/mxfp4.py`` have it)
    The expert weights ``...mlp.experts.gate_up_proj`` (HF parameter [experts, hidden, 2 * inter],
    gate and up interleaved on the last axis) and ``...mlp.experts.down_proj`` ([experts, inter, hidden])
    are stored transposed, as [experts, out, in], and cut along ``in`` into blocks of 32 values:
    ``<name>_blocks`` uint8 [experts, out, in / 32, 16] holds FP4 e2m1 codes two per byte, element 2j
    of a block in the low nibble of byte j and element 2j + 1 in the high nibble (bit 3 of a code is
    the sign, bits 0-2 index 0, 0.5, 1, 1.5, 2, 3, 4, 6); ``<name>_scales`` uint8 [experts, out, in / 32]
    is each block's e8m0 scale, the value 2 ** (scale - 127). Biases, attention, router, embeddings and
    head stay float. config.json records ``quantization_config = {"quant_method": "mxfp4", ...}``.

``int8`` (weight-only, symmetric, per output channel; this project's own layout)
    Every Linear weight of the decoder layers (2-D ``model.layers.*.weight``), [out, in], becomes
    ``<name>.weight`` int8 [out, in] in -127..127 plus ``<name>.weight_scale`` float32 [out], and
    float = int8 * scale[:, None], with scale = max |row| / 127. Embeddings, norms and the head stay
    float. config.json records ``quantization_config = {"quant_method": "autoport_int8", ...}``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

MXFP4_BLOCK = 32
E8M0_BIAS = 127
FP4_E2M1 = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)  # magnitude of codes 0..7; code | 8 is the negative
MXFP4_EXPERT_WEIGHTS = ("mlp.experts.gate_up_proj", "mlp.experts.down_proj")
INT8_METHOD = "autoport_int8"


# -- MXFP4 --------------------------------------------------------------------------------------------
def mxfp4_quantize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[..., n] floats (n a multiple of 32) -> (blocks uint8 [..., n / 32, 16], scales uint8 [..., n / 32]).

    Each block's scale is the smallest power of two that brings its largest magnitude within e2m1's
    range (<= 6), so nothing is clipped; each value is rounded to the nearest e2m1 value, ties to the
    even code.
    """
    *lead, n = weight.shape
    if n % MXFP4_BLOCK:
        raise ValueError(f"MXFP4 needs the quantised axis to be a multiple of {MXFP4_BLOCK}, got {n}")
    x = weight.detach().float().reshape(*lead, n // MXFP4_BLOCK, MXFP4_BLOCK)
    amax = x.abs().amax(-1, keepdim=True)
    mantissa, exponent = torch.frexp(amax / FP4_E2M1[-1])  # amax / 6 = m * 2**e, m in [0.5, 1)
    exponent = torch.where(mantissa == 0.5, exponent - 1, exponent)  # an exact power of two needs no step up
    exponent = torch.where(amax > 0, exponent, -E8M0_BIAS).clamp(-E8M0_BIAS, E8M0_BIAS)
    magnitude = (x.abs() / torch.exp2(exponent.float())).contiguous()

    grid = torch.tensor(FP4_E2M1)
    midpoints = (grid[1:] + grid[:-1]) / 2
    code = torch.bucketize(magnitude, midpoints)  # a value on a midpoint goes to the lower code ...
    tie = (code < len(midpoints)) & (magnitude == midpoints[code.clamp(max=len(midpoints) - 1)])
    code = code + (tie & (code % 2 == 1)).long()  # ... unless that code is odd
    code = code | (x < 0).long() << 3
    blocks = code[..., 0::2] | code[..., 1::2] << 4
    return blocks.to(torch.uint8), (exponent.squeeze(-1) + E8M0_BIAS).to(torch.uint8)


def mxfp4_dequantize(blocks: torch.Tensor, scales: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """The inverse of ``mxfp4_quantize``: [..., g, 16] codes and [..., g] scales -> [..., g * 32] values."""
    lut = torch.tensor(FP4_E2M1 + tuple(-v for v in FP4_E2M1), dtype=dtype)
    blocks = blocks.to(torch.int64)
    values = torch.stack((lut[blocks & 0x0F], lut[blocks >> 4]), dim=-1).flatten(-2)
    values = torch.ldexp(values, scales.to(torch.int32)[..., None] - E8M0_BIAS)
    return values.flatten(-2)


def _quantize_mxfp4(state_dict: dict, config) -> tuple[dict, dict]:
    out = {}
    for key, tensor in state_dict.items():
        if key.endswith(MXFP4_EXPERT_WEIGHTS):
            out[f"{key}_blocks"], out[f"{key}_scales"] = mxfp4_quantize(tensor.transpose(-1, -2))
        else:
            out[key] = tensor
    quantization_config = {
        "quant_method": "mxfp4",
        "modules_to_not_convert": [
            "model.layers.*.self_attn",
            "model.layers.*.mlp.router",
            "model.embed_tokens",
            "lm_head",
        ],
    }
    return out, quantization_config


def _dequantize_mxfp4(state_dict: dict) -> dict:
    out = {}
    for key, tensor in state_dict.items():
        if key.endswith("_blocks"):
            name = key.removesuffix("_blocks")
            out[name] = mxfp4_dequantize(tensor, state_dict[f"{name}_scales"]).transpose(-1, -2).contiguous()
        elif not key.endswith("_scales"):
            out[key] = tensor
    return out


# -- INT8 weight-only ---------------------------------------------------------------------------------
def int8_quantize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[out, in] floats -> (int8 [out, in], float32 scale [out]), symmetric, one scale per output channel."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1) / 127
    q = torch.round(w / torch.where(scale > 0, scale, 1.0)[:, None]).clamp(-127, 127)
    return q.to(torch.int8), scale


def int8_dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.to(torch.float32) * scale[:, None]


def _is_int8_target(key: str, tensor: torch.Tensor) -> bool:
    return key.startswith("model.layers.") and key.endswith(".weight") and tensor.dim() == 2


def _quantize_int8(state_dict: dict, config) -> tuple[dict, dict]:
    out = {}
    for key, tensor in state_dict.items():
        if _is_int8_target(key, tensor):
            out[key], out[f"{key}_scale"] = int8_quantize(tensor)
        else:
            out[key] = tensor
    quantization_config = {
        "quant_method": INT8_METHOD,
        "bits": 8,
        "symmetric": True,
        "granularity": "per_output_channel",
        "quantized": "every Linear weight of model.layers.*",
        "layout": "<name>.weight int8 [out, in] + <name>.weight_scale float32 [out]; float = int8 * scale[:, None]",
    }
    return out, quantization_config


def _dequantize_int8(state_dict: dict) -> dict:
    out = {}
    for key, tensor in state_dict.items():
        if key.endswith(".weight_scale"):
            continue
        scale = state_dict.get(f"{key}_scale")
        out[key] = tensor if scale is None else int8_dequantize(tensor, scale)
    return out


# -- folders ------------------------------------------------------------------------------------------
SCHEMES: dict[str, Callable] = {"mxfp4": _quantize_mxfp4, "int8": _quantize_int8}
DEQUANTIZERS: dict[str, Callable] = {"mxfp4": _dequantize_mxfp4, INT8_METHOD: _dequantize_int8}


def quantize_checkpoint(folder: Path, scheme: str, config) -> None:
    """Rewrite the float safetensors of ``folder`` in the layout of ``scheme``, and record the
    scheme's ``quantization_config`` in config.json."""
    from safetensors.torch import load_file, save_file

    if scheme not in SCHEMES:
        raise ValueError(f"unknown quantisation scheme {scheme!r}; known: {sorted(SCHEMES)}")
    folder = Path(folder)
    index_file = folder / "model.safetensors.index.json"
    index = json.loads(index_file.read_text()) if index_file.is_file() else None
    quantization_config = None
    weight_map = {}
    for path in sorted(folder.glob("*.safetensors")):
        tensors, quantization_config = SCHEMES[scheme](load_file(path), config)
        save_file({k: v.contiguous() for k, v in tensors.items()}, path, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, path.name))
    if index is not None:
        index["weight_map"] = dict(sorted(weight_map.items()))
        index_file.write_text(json.dumps(index, indent=2))
    config_file = folder / "config.json"
    saved = json.loads(config_file.read_text())
    saved["quantization_config"] = quantization_config
    config_file.write_text(json.dumps(saved, indent=2, sort_keys=True))


def quant_method(folder: Path) -> str | None:
    config_file = Path(folder) / "config.json"
    if not config_file.is_file():
        return None
    return (json.loads(config_file.read_text()).get("quantization_config") or {}).get("quant_method")


def dequantized_state_dict(folder: Path) -> dict:
    """The float state dict a quantised folder stands for (the folder's own tensors when unquantised)."""
    from .checkpoint import load_state_dict

    state_dict = load_state_dict(Path(folder))
    method = quant_method(folder)
    return DEQUANTIZERS[method](state_dict) if method in DEQUANTIZERS else state_dict


def reference_loader(folder: Path) -> Callable | None:
    """A loader ``(model_cls, folder, dtype) -> model`` for quantised folders, else None."""
    method = quant_method(folder)
    if method is None:
        return None
    if method == "mxfp4":
        return _load_mxfp4_dequantized
    if method not in DEQUANTIZERS:
        from .errors import AutoportError

        raise AutoportError(
            f"{folder}: no float reference for quant_method {method!r} (known: {sorted(DEQUANTIZERS)})"
        )
    return _load_dequantized


def _load_mxfp4_dequantized(model_cls, folder: Path, dtype):
    """transformers' own MXFP4 dequantisation (CPU, no kernels package): the reference owes nothing to
    this module's ``mxfp4_dequantize``. Plain ``from_pretrained`` would try the Triton kernels, or ask for
    accelerate."""
    from transformers import Mxfp4Config

    model = model_cls.from_pretrained(
        folder, quantization_config=Mxfp4Config(dequantize=True), dtype=dtype, attn_implementation="eager"
    )
    # transformers 4.x leaves the dequantised experts in bfloat16, which holds MXFP4 values exactly
    return model.to(dtype)


def _load_dequantized(model_cls, folder: Path, dtype):
    """The HF model built from the folder's config, holding the dequantised float weights."""
    from transformers import AutoConfig, GenerationConfig

    config = AutoConfig.from_pretrained(folder)
    del config.quantization_config
    model = model_cls._from_config(config, attn_implementation="eager", dtype=torch.float32)
    missing, unexpected = model.load_state_dict(dequantized_state_dict(folder), strict=False)
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    missing = [key for key in missing if key not in tied]
    if missing or unexpected:
        from .errors import AutoportError

        raise AutoportError(
            f"{folder}: the dequantised checkpoint does not fit {model_cls.__name__}: "
            f"missing {missing[:8]}, unexpected {unexpected[:8]}"
        )
    model.tie_weights()
    if (Path(folder) / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(folder)
    return model.to(dtype)
