"""The HuggingFace side of every comparison: loading the reference, capturing module I/O, greedy golden."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import AutoportError, SpecError
from .progress import progress


@dataclass
class Capture:
    """One module call observed during a reference forward pass."""

    args: tuple
    kwargs: dict
    output: torch.Tensor
    order: int  # completion order within the forward pass


def load_hf_model(model_class: str, weights_dir: Path, spec_path: Path, dtype=torch.float32, config=None):
    """The HF reference in ``dtype``; ``config``: a config of fewer layers than the checkpoint's
    (reduced-layer mode), the later layers' tensors then go unused."""
    import transformers

    cls = getattr(transformers, model_class, None)
    if cls is None:
        raise SpecError(spec_path, "model.hf_model_class", f"transformers has no class {model_class!r}")
    from .quantization import reference_loader

    loader = reference_loader(weights_dir)
    if loader is not None:
        if config is not None:
            raise AutoportError(
                "--autoport-layers: reduced-layer mode does not support quantized checkpoints"
            )
        return loader(cls, weights_dir, dtype).eval()
    dtype_kw = "dtype" if _major(transformers.__version__) >= 5 else "torch_dtype"
    extra = {"config": config} if config is not None else {}
    model = cls.from_pretrained(weights_dir, attn_implementation="eager", **{dtype_kw: dtype}, **extra)
    return model.eval()


def _major(version: str) -> int:
    return int(version.split(".")[0])


def first_tensor(value):
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    if hasattr(value, "last_hidden_state"):
        return value.last_hidden_state
    if isinstance(getattr(value, "hidden_states", None), torch.Tensor):  # NxDI's NeuronAttentionBaseOutput
        return value.hidden_states
    raise TypeError(f"cannot find a tensor in a {type(value).__name__} module output")


@torch.inference_mode()
def capture_modules(model: torch.nn.Module, paths: list[str], run) -> dict[str, Capture]:
    """Run ``run()`` with hooks on ``paths``; returns each module's inputs and output (first call)."""
    captures: dict[str, Capture] = {}
    handles = []
    pending: dict[str, tuple] = {}
    for path in paths:
        module = model.get_submodule(path)

        def pre_hook(mod, args, kwargs, path=path):
            pending.setdefault(path, (args, kwargs))

        def post_hook(mod, args, kwargs, output, path=path):
            if path not in captures:
                call_args, call_kwargs = pending[path]
                captures[path] = Capture(call_args, call_kwargs, first_tensor(output).clone(), len(captures))

        handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
        handles.append(module.register_forward_hook(post_hook, with_kwargs=True))
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return captures


def hidden_input(capture: Capture) -> torch.Tensor:
    if capture.args:
        return capture.args[0]
    for name in ("hidden_states", "input", "x", "input_ids"):
        if name in capture.kwargs:
            return capture.kwargs[name]
    raise TypeError(f"cannot find the hidden-state input among {sorted(capture.kwargs)}")


@torch.inference_mode()
def greedy_golden(
    model, prompts: list[list[int]], max_new_tokens: int, pad_id: int | None, *, encoder_decoder: bool = False
) -> list[list[int]]:
    """FP32 greedy continuation of each prompt, exactly ``max_new_tokens`` long (EOS not honoured).
    Encoder-decoder: the prompt is the encoder input and the continuation is the decoder output after
    its start token."""
    out = []
    for prompt in progress(prompts, desc="FP32 golden"):
        ids = torch.tensor([prompt])
        generated = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=pad_id,
        )
        out.append(generated[0, 1 if encoder_decoder else ids.shape[1] :].tolist())
    return out


@torch.inference_mode()
def teacher_forced_logits(
    model, prompts: list[list[int]], golden: list[list[int]], decoder_start: int | None = None
) -> list[torch.Tensor]:
    """Per prompt, the logits ``[len(golden), vocab]`` (float32) predicting each golden token from one
    forward over prompt + golden. ``decoder_start`` (encoder-decoder): the prompt is the encoder input
    and the decoder scores the start token + golden."""
    out = []
    for prompt, tokens in zip(prompts, golden):
        if decoder_start is not None:
            seq = [decoder_start] + tokens
            logits = model(input_ids=torch.tensor([prompt]), decoder_input_ids=torch.tensor([seq])).logits
            out.append(logits[0, : len(tokens)].float())
        else:
            logits = model(torch.tensor([prompt + tokens])).logits
            out.append(logits[0, len(prompt) - 1 : len(prompt) - 1 + len(tokens)].float())
    return out


def cast_floats(value, dtype):
    """A copy of a (nested) call argument with floating tensors cast to ``dtype`` (None: unchanged)."""
    if dtype is None:
        return value if not isinstance(value, dict) else dict(value)
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, tuple):
        return tuple(cast_floats(v, dtype) for v in value)
    if isinstance(value, list):
        return [cast_floats(v, dtype) for v in value]
    if isinstance(value, dict):
        return {k: cast_floats(v, dtype) for k, v in value.items()}
    return value


def resolve_component(component, hf_model, num_layers: int, spec_path) -> tuple:
    """(the component with the HF path the installed transformers uses, a reason to skip it or "").

    ``hf_module`` wins where any layer has it, else the first of ``hf_module_aliases`` that does (the
    port path stays the spec's). A module that is a container (ModuleList/ModuleDict) is never called,
    so there is nothing to compare: the component is skipped with that reason."""
    import dataclasses

    layers = range(num_layers) if component.per_layer else [None]
    for path in [component.hf_module, *component.hf_module_aliases]:
        modules = [
            m for m in (_submodule(hf_model, path.format(i=layer)) for layer in layers) if m is not None
        ]
        if not modules:
            continue
        if path != component.hf_module:
            component = dataclasses.replace(
                component, hf_module=path, port_module=component.port_module or component.hf_module
            )
        if all(isinstance(m, (torch.nn.ModuleList, torch.nn.ModuleDict)) for m in modules):
            kind = type(modules[0]).__name__
            return component, f"HF module {path!r} is a {kind} here, never called as one module"
        return component, ""
    names = " or ".join(repr(p) for p in [component.hf_module, *component.hf_module_aliases])
    # a layer may lack a module (a dense layer in an MoE model), no layer may not
    raise AutoportError(f"{spec_path}: components {component.name!r}: HF module {names} exists in no layer")


def _submodule(model, path: str):
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def component_paths(spec, hf_skeleton, layers: int):
    """(entries, resolved components, skipped components) of ``spec``: an entry is (component name, HF
    path, port path, layer) for every component of every layer; each component's
    ``hf_module_aliases`` is resolved against the installed transformers, and a component whose HF
    module is a container that is never called is left out with its reason (name -> reason)."""
    entries, resolved, skipped_components = [], [], {}
    for comp in spec.components:
        comp, skipped = resolve_component(comp, hf_skeleton, layers, spec.path)
        if skipped:
            skipped_components[comp.name] = skipped
            continue
        resolved.append(comp)
        entries += [
            (comp.name, comp.hf_path(layer), comp.port_path(layer), layer)
            for layer in (range(layers) if comp.per_layer else [None])
            if _has_submodule(hf_skeleton, comp.hf_path(layer))
        ]
    return entries, resolved, skipped_components


def _has_submodule(model, path: str) -> bool:
    try:
        model.get_submodule(path)
    except AttributeError:
        return False
    return True


# tensors of older checkpoints that transformers drops on load for every model with RoPE tables or
# position-id buffers (they became non-persistent buffers)
LEGACY_BUFFER_KEYS = (r"rotary_emb\.inv_freq$", r"(^|\.)position_ids$")


def hf_ignored_keys(hf_model_class: str):
    """``ignored(key) -> bool``: whether transformers, loading the checkpoint into ``hf_model_class``,
    drops ``key`` without a word (the class's ``_keys_to_ignore_on_load_unexpected``, legacy buffers)."""
    import re

    import transformers

    patterns = set(LEGACY_BUFFER_KEYS)
    patterns.update(
        getattr(getattr(transformers, hf_model_class, None), "_keys_to_ignore_on_load_unexpected", None) or ()
    )
    regex = re.compile("|".join(f"(?:{p})" for p in sorted(patterns)))
    return lambda key: regex.search(key) is not None
