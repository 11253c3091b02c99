"""The FP32 HuggingFace reference scored one decoder layer at a time (``--autoport-golden-streaming``).

The HF model is built with every parameter on the meta device (buffers such as RoPE's ``inv_freq`` are
computed as usual); the parameters outside the decoder layers (embeddings, final norm, head) are loaded
once, and HF's own ``forward`` runs unchanged with a forward pre-hook on each decoder layer that reads
that layer's tensors from the memory-mapped safetensors and a forward hook that puts them back on meta.
So every family keeps its own masks, sliding windows, MLA, sinks and MoE routing, and the peak memory
is about one layer plus the non-layer parameters plus activations.

Checkpoint keys reach the model through transformers' own weight conversions (transformers 5 fuses
per-expert checkpoint tensors, for one); quantised folders whose float reference is a per-tensor
dequantisation (``quantization.DEQUANTIZERS``: INT8 and MXFP4) are dequantised layer by layer; the
tests check that MXFP4 so dequantised equals transformers' own dequantising load.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path

import torch

from .errors import AutoportError


@contextmanager
def parameters_on_meta():
    """Modules built inside this block register their parameters on the meta device; buffers stay real."""
    original = torch.nn.Module.register_parameter

    def register(module, name, param):
        if param is not None and param.device.type != "meta":
            param = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        original(module, name, param)

    torch.nn.Module.register_parameter = register
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = original


def _to_meta(module: torch.nn.Module) -> None:
    for sub in module.modules():
        for name, param in sub._parameters.items():
            if param is not None and not param.is_meta:
                sub._parameters[name] = torch.nn.Parameter(param.to("meta"), requires_grad=False)


class StreamingReference:
    """``score(sequences)``: the HF model's logits over each token sequence, computed with at most one
    decoder layer's parameters in memory. ``max_materialized_layers`` records the most decoder layers
    that ever held real parameters at once (1 when streaming works)."""

    def __init__(self, model_class: str, folder: Path, dtype=torch.float32, config=None):
        """``config``: the checkpoint's config with fewer layers (reduced-layer mode); the later layers'
        tensors are then never read."""
        import copy

        import transformers

        self.folder = Path(folder)
        self.dtype = dtype
        cls = getattr(transformers, model_class, None)
        if cls is None:
            raise AutoportError(f"streaming reference: transformers has no class {model_class!r}")
        if config is None:
            config = transformers.AutoConfig.from_pretrained(self.folder)
        else:
            config = copy.deepcopy(config)
        if getattr(config, "is_encoder_decoder", False):
            raise AutoportError(
                f"streaming reference: {model_class} is an encoder-decoder model; the streaming golden "
                "scores decoder-only models (run without --autoport-golden-streaming)"
            )
        self.dequantize = _dequantizer(self.folder)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        with parameters_on_meta():
            model = cls._from_config(config, attn_implementation="eager", dtype=torch.float32)
        self.model = model.to(dtype).eval()  # floating buffers in the reference's dtype, as a cast model
        self.layers_path, self.layers = _decoder_layers(self.model, config.num_hidden_layers, model_class)
        self._by_layer = _group_by_layer(_checkpoint_keys(self.folder), self.layers_path)
        self._weight_mapping = _weight_mapping(self.model)
        self._load(self._by_layer.pop(None, []), what="outside the decoder layers")
        if hasattr(self.model, "tie_weights"):
            self.model.tie_weights()
        outside = [
            name
            for name, p in self.model.named_parameters()
            if p.is_meta and not name.startswith(self.layers_path + ".")
        ]
        if outside:
            raise AutoportError(f"{self.folder}: the checkpoint lacks {outside[:8]} for {model_class}")
        self.max_materialized_layers = 0
        self._bar = None  # the progress bar of the forward in flight
        for index, layer in enumerate(self.layers):
            layer.register_forward_pre_hook(lambda mod, args, index=index: self._materialize(index))
            layer.register_forward_hook(lambda mod, args, out: self._release(mod))

    def _release(self, layer) -> None:
        _to_meta(layer)
        if self._bar is not None:
            self._bar.update(1)

    def _materialize(self, index: int) -> None:
        layer = self.layers[index]
        self._load(self._by_layer.get(index, []), what=f"layer {index}")
        missing = [name for name, p in layer.named_parameters() if p.is_meta]
        if missing:
            raise AutoportError(
                f"{self.folder}: the checkpoint lacks {self.layers_path}.{index}.{missing[0]} "
                f"({len(missing)} parameters of layer {index} missing)"
            )
        live = sum(any(not p.is_meta for p in other.parameters()) for other in self.layers)
        self.max_materialized_layers = max(self.max_materialized_layers, live)

    def _load(self, keys: list[tuple[str, Path]], what: str) -> None:
        tensors = _read(keys)
        if self.dequantize is not None:
            tensors = self.dequantize(tensors)
        _load_into(self.model, tensors, self._weight_mapping, self.dtype, f"{self.folder} ({what})")

    @torch.inference_mode()
    def score(self, sequences: list[list[int]]) -> list[torch.Tensor]:
        """Float32 logits [len(seq), vocab] of each sequence: one right-padded batch, use_cache off."""
        if not sequences:
            return []
        width = max(len(s) for s in sequences)
        ids = torch.zeros(len(sequences), width, dtype=torch.long)
        mask = torch.zeros(len(sequences), width, dtype=torch.long)
        for row, seq in enumerate(sequences):
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        from .progress import progress

        try:
            with progress(total=len(self.layers), desc="FP32 reference, layer by layer") as self._bar:
                logits = self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        finally:
            self._bar = None
            for layer in self.layers:  # a forward that raised leaves its layer materialised
                _to_meta(layer)
        return [logits[row, : len(seq)].float() for row, seq in enumerate(sequences)]


def _dequantizer(folder: Path):
    """None for a float checkpoint, else the quantised scheme's per-tensor dequantisation."""
    from .quantization import DEQUANTIZERS, quant_method

    method = quant_method(folder)
    if method is None:
        return None
    if method not in DEQUANTIZERS:
        raise AutoportError(
            f"{folder}: streaming reference: no float reference for quant_method {method!r} "
            f"(known: {sorted(DEQUANTIZERS)})"
        )
    return DEQUANTIZERS[method]


def _decoder_layers(model, num_layers: int, model_class: str):
    """(path, ModuleList) of the decoder layers: the ModuleList of ``num_hidden_layers`` modules."""
    for path, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == num_layers and path.endswith("layers"):
            return path, module
    raise AutoportError(f"streaming reference: cannot find the {num_layers} decoder layers of {model_class}")


def _checkpoint_keys(folder: Path) -> list[tuple[str, Path]]:
    """(key, file) of every tensor of the (possibly sharded) checkpoint, from the headers alone."""
    from safetensors import SafetensorError, safe_open

    from .checkpoint import safetensors_files

    files = safetensors_files(folder)
    if not files:
        raise AutoportError(f"{folder}: no *.safetensors files (the streaming reference reads safetensors)")
    keys = []
    for name in files:
        try:
            with safe_open(str(folder / name), framework="pt") as handle:
                keys += [(key, folder / name) for key in handle.keys()]
        except (SafetensorError, OSError) as exc:
            raise AutoportError(f"{folder / name}: cannot read safetensors: {exc}") from None
    return keys


def _read(keys: list[tuple[str, Path]]) -> dict:
    """The tensors of ``keys``, copied out of their memory-mapped files. Each file is mapped only while
    its tensors are copied: a mapping kept open would keep every page ever read resident (and counted
    in the process's RSS), which would add up to the whole checkpoint over one forward."""
    from safetensors import safe_open

    by_file: dict[Path, list[str]] = {}
    for key, path in keys:
        by_file.setdefault(path, []).append(key)
    tensors = {}
    for path, names in by_file.items():
        with safe_open(str(path), framework="pt") as handle:
            tensors.update((name, handle.get_tensor(name)) for name in names)
    return tensors


def _group_by_layer(keys, layers_path: str) -> dict:
    """Checkpoint keys by decoder layer index (None: outside the layers)."""
    pattern = re.compile(rf"^{re.escape(layers_path)}\.(\d+)\.")
    groups: dict = {}
    for key, path in keys:
        match = pattern.match(key)
        groups.setdefault(int(match.group(1)) if match else None, []).append((key, path))
    return groups


def _weight_mapping(model):
    """transformers' checkpoint -> model key conversions for this model (transformers 5); None before."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
    except ImportError:
        return None
    return get_model_conversion_mapping(model)


def _load_into(model, tensors: dict, weight_mapping, dtype, where: str) -> None:
    """Set the model's parameters from checkpoint ``tensors`` (cast to ``dtype``), through
    transformers' own key conversions where it has them."""
    if not tensors:
        return
    if weight_mapping is None:
        _assign(model, tensors, where)
        return
    from transformers.core_model_loading import convert_and_load_state_dict_in_model
    from transformers.modeling_utils import LoadStateDictConfig

    config = LoadStateDictConfig(dtype=dtype, weight_mapping=weight_mapping)
    with _quiet_progress():
        info, _ = convert_and_load_state_dict_in_model(model, tensors, config)
    if info.mismatched_keys or info.unexpected_keys or info.conversion_errors:
        raise AutoportError(
            f"{where}: checkpoint tensors do not fit the model: mismatched {sorted(info.mismatched_keys)[:4]}, "
            f"unexpected {sorted(info.unexpected_keys)[:4]}, conversion errors {list(info.conversion_errors)[:4]}"
        )


def _assign(model, tensors: dict, where: str) -> None:
    """Checkpoint keys are the model's own names (transformers 4): set each parameter or persistent buffer."""
    targets = dict(model.named_parameters(remove_duplicate=False))
    targets.update(model.named_buffers(remove_duplicate=False))
    for key, tensor in tensors.items():
        if key not in targets:
            raise AutoportError(f"{where}: checkpoint tensor {key!r} is no parameter or buffer of the model")
        if tuple(tensor.shape) != tuple(targets[key].shape):
            raise AutoportError(
                f"{where}: {key} has shape {tuple(tensor.shape)}, the model expects {tuple(targets[key].shape)}"
            )
        module_path, _, name = key.rpartition(".")
        module = model.get_submodule(module_path) if module_path else model
        value = tensor.to(targets[key].dtype) if tensor.is_floating_point() else tensor
        if name in module._buffers:
            module._buffers[name] = value
        else:
            module._parameters[name] = torch.nn.Parameter(value, requires_grad=False)


@contextmanager
def _quiet_progress():
    """transformers' per-load progress bar off (one would print per layer per forward)."""
    from transformers.utils import logging

    enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            logging.enable_progress_bar()
