"""Stand-in for ``neuronx_distributed_inference.models.config`` (contract tests only).

Mirrors the real module's shape: importing it needs torch_neuronx and neuronx_distributed; a
NeuronConfig's ``attn_cls`` defaults to the *name* "NeuronLlamaAttention"; ``InferenceConfig.save``
writes ``neuron_config.json`` (classes as ``{"__module__", "__name__"}``, dtypes as strings) and
``load`` reads it back. Unlike the real class, NeuronConfig rejects keyword arguments outside the
ones listed below (all of which exist in the real one), so a misspelt argument fails here.
"""

import inspect
import json
import os

import _standin_log
import neuronx_distributed  # noqa: F401  (the real module imports both)
import torch
import torch_neuronx  # noqa: F401

CONFIG_FILE = "neuron_config.json"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
KNOWN_NEURON_CONFIG_KWARGS = {
    "batch_size": 1,
    "seq_len": 128,
    "max_context_length": None,
    "enable_bucketing": False,
    "buckets": None,
    "context_encoding_buckets": None,
    "token_generation_buckets": None,
    "torch_dtype": torch.bfloat16,
    "tp_degree": 1,
    "on_cpu": False,
    "attn_cls": "NeuronLlamaAttention",
    "padding_side": "right",
    "save_sharded_checkpoint": False,
    "skip_warmup": False,
    "output_logits": False,
}


def to_dict(obj):
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_dict(v) for v in obj]
    if inspect.isclass(obj):
        return {"__module__": obj.__module__, "__name__": obj.__name__}
    if isinstance(obj, torch.dtype):
        return str(obj).split(".")[1]
    if hasattr(obj, "__dict__"):
        return {k: to_dict(v) for k, v in vars(obj).items()}
    return obj


class NeuronConfig:
    def __init__(self, **kwargs):
        _standin_log.record("NeuronConfig.__init__", cls=type(self).__name__, kwargs=dict(kwargs))
        unknown = sorted(set(kwargs) - set(KNOWN_NEURON_CONFIG_KWARGS))
        if unknown:
            raise TypeError(f"stand-in NeuronConfig: unknown arguments {unknown}")
        for name, default in KNOWN_NEURON_CONFIG_KWARGS.items():
            setattr(self, name, kwargs.get(name, default))
        if isinstance(self.torch_dtype, str):
            self.torch_dtype = DTYPES[self.torch_dtype]
        if self.max_context_length is None:
            self.max_context_length = self.seq_len
        if self.buckets is None:
            self.buckets = [self.seq_len]
        if self.context_encoding_buckets:
            assert self.context_encoding_buckets[-1] <= self.max_context_length
        if self.token_generation_buckets:
            assert self.token_generation_buckets[-1] <= self.seq_len


class InferenceConfig:
    def __init__(self, neuron_config, fused_spec_config=None, load_config=None, metadata=None, **kwargs):
        _standin_log.record(
            "InferenceConfig.__init__", cls=type(self).__name__, neuron_config=type(neuron_config).__name__
        )
        self.neuron_config = neuron_config
        self.fused_spec_config = fused_spec_config
        if load_config is not None:
            load_config(self)
        self.metadata = metadata
        for key, value in kwargs.items():
            setattr(self, key, value)
        self.add_derived_config()
        missing = [a for a in self.get_required_attributes() if not hasattr(self, a)]
        assert not missing, f"Config must define {missing}"

    def add_derived_config(self):
        self.num_cores_per_group = 1

    def get_required_attributes(self):
        return []

    def save(self, model_path):
        _standin_log.record("InferenceConfig.save", model_path=str(model_path))
        os.makedirs(model_path, exist_ok=True)
        with open(os.path.join(model_path, CONFIG_FILE), "w", encoding="utf-8") as f:
            f.write(json.dumps(to_dict(self), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, model_path, **kwargs):
        _standin_log.record("InferenceConfig.load", cls=cls.__name__, model_path=str(model_path))
        with open(os.path.join(model_path, CONFIG_FILE), encoding="utf-8") as f:
            merged = json.load(f)
        merged.update(kwargs)
        if isinstance(merged.get("neuron_config"), dict):
            merged["neuron_config"] = cls.get_neuron_config_cls()(**merged["neuron_config"])
        return cls(**merged)

    @classmethod
    def get_neuron_config_cls(cls):
        return NeuronConfig
