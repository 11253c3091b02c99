"""NxDI configuration from a port spec: the NeuronConfig arguments and the InferenceConfig.

CPU mode (``to_cpu()``) builds a single NeuronBaseModel shared by both wrappers, whose
context-encoding mask has ``n_positions = seq_len``: it only fits a context bucket of ``seq_len``
(NxDI's own CPU tests set ``max_context_length == seq_len``). So the CPU application gets one
bucket of ``max_seq_len`` for both phases; the spec's buckets are for the device.
"""

from __future__ import annotations

import torch

from ...spec import PortSpec
from .runtime import NXDI, nxdi, step


def neuron_config_kwargs(spec: PortSpec, dtype: torch.dtype, *, tp_degree: int, on_cpu: bool) -> dict:
    """NeuronConfig arguments from the spec: static batch, sequence length and buckets; on the device,
    expert parallelism as NxDI's MoE modules read it (``ep_degree`` groups of tp / ep cores). CPU mode
    runs every expert in one process."""
    p = spec.port
    if on_cpu:
        return {
            "batch_size": p.batch_size,
            "seq_len": p.max_seq_len,
            "max_context_length": p.max_seq_len,
            "enable_bucketing": False,
            "torch_dtype": dtype,
            "tp_degree": tp_degree,
            "on_cpu": True,
        }
    experts = (
        {"moe_ep_degree": p.ep_degree, "moe_tp_degree": tp_degree // p.ep_degree} if p.ep_degree > 1 else {}
    )
    return {
        **experts,
        "batch_size": p.batch_size,
        "seq_len": p.max_seq_len,
        "max_context_length": p.context_bucket_list[-1],
        "enable_bucketing": True,
        "context_encoding_buckets": list(p.context_bucket_list),
        "token_generation_buckets": list(p.token_bucket_list),
        "torch_dtype": dtype,
        "tp_degree": tp_degree,
        "on_cpu": False,
    }


def app_buckets(spec: PortSpec, *, on_cpu: bool) -> tuple[list[int], list[int]]:
    """(context-encoding buckets, token-generation buckets) of the application built for ``spec``."""
    if on_cpu:
        return [spec.port.max_seq_len], [spec.port.max_seq_len]
    return list(spec.port.context_bucket_list), list(spec.port.token_bucket_list)


def nxdi_bucket(length: int, buckets: list[int]) -> int | None:
    """The bucket NxDI's ``get_target_bucket`` picks for an attention mask of ``length``: the first
    bucket strictly longer, or the largest when the input fills it exactly."""
    for bucket in buckets:
        if length < bucket:
            return bucket
    return buckets[-1] if buckets and length == buckets[-1] else None


def config_classes(app_cls):
    with step(f"{app_cls.__name__}.get_config_cls()"):
        config_cls = app_cls.get_config_cls()
    with step(f"{config_cls.__name__}.get_neuron_config_cls()"):
        neuron_config_cls = config_cls.get_neuron_config_cls()
    return config_cls, neuron_config_cls


def inference_config(app_cls, spec: PortSpec, dtype: torch.dtype, *, tp_degree: int, on_cpu: bool):
    hf_adapter = nxdi(f"{NXDI}.utils.hf_adapter")
    config_cls, neuron_config_cls = config_classes(app_cls)
    kwargs = neuron_config_kwargs(spec, dtype, tp_degree=tp_degree, on_cpu=on_cpu)
    with step(f"{neuron_config_cls.__name__}(**{kwargs})"):
        neuron_config = neuron_config_cls(**kwargs)
    weights = str(spec.weights_dir)
    with step(f"{config_cls.__name__}(neuron_config, load_config=load_pretrained_config({weights!r}))"):
        return config_cls(neuron_config, load_config=hf_adapter.load_pretrained_config(weights))
