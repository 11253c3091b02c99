"""A toy port written against the stand-in NxDI, shaped like a real NxDI port (contract tests only).

It has the four classes a port defines (InferenceConfig and NeuronConfig subclasses, a
NeuronBaseModel and a NeuronBaseForCausalLM), plus two variants whose NeuronConfig leaves
``attn_cls`` at NxDI's default or sets it to None (as most real ports do: only NxDI's Llama reads it). Its layers are position-wise, so the toy needs no
KV cache to give the same answer in context encoding and token generation.
"""

import torch
from neuronx_distributed_inference.models.config import InferenceConfig, NeuronConfig
from neuronx_distributed_inference.models.model_base import NeuronBaseForCausalLM, NeuronBaseModel
from torch import nn


class TinyAttention(nn.Module):
    """Only named by attn_cls; the toy model never calls it."""


class TinyNeuronConfig(NeuronConfig):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.attn_cls = TinyAttention


class TinyInferenceConfig(InferenceConfig):
    def get_required_attributes(self):
        return ["hidden_size", "vocab_size", "num_hidden_layers"]

    @classmethod
    def get_neuron_config_cls(cls):
        return TinyNeuronConfig


class TinyMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.up_proj = nn.Linear(config.hidden_size, 2 * config.hidden_size, bias=False)
        self.down_proj = nn.Linear(2 * config.hidden_size, config.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(nn.functional.silu(self.up_proj(x))), None  # NxDI MLPs return (out, residual)


class TinyRMSNorm(nn.Module):
    def __init__(self, hidden_size, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x):
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


class TinyDecoderLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.mlp = TinyMLP(config)
        self.calls = []  # what the layer was called with, for the tests

    def forward(self, hidden_states, attention_mask=None, position_ids=None):
        self.calls.append((attention_mask, position_ids))
        return hidden_states + self.mlp(hidden_states)[0], None, None, None, None


class NeuronTinyModel(NeuronBaseModel):
    def setup_attr_for_model(self, config):
        self.hidden_size = config.hidden_size

    def init_model(self, config):
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(TinyDecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = TinyRMSNorm(config.hidden_size)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)


class NeuronTinyForCausalLM(NeuronBaseForCausalLM):
    _model_cls = NeuronTinyModel

    @staticmethod
    def convert_hf_to_neuron_state_dict(state_dict, config):
        return dict(state_dict)

    @classmethod
    def get_config_cls(cls):
        return TinyInferenceConfig


class DefaultAttnClsInferenceConfig(TinyInferenceConfig):
    @classmethod
    def get_neuron_config_cls(cls):
        return NeuronConfig  # attn_cls stays NxDI's default name, "NeuronLlamaAttention"


class DefaultAttnClsForCausalLM(NeuronTinyForCausalLM):
    @classmethod
    def get_config_cls(cls):
        return DefaultAttnClsInferenceConfig


class NoneAttnClsNeuronConfig(NeuronConfig):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.attn_cls = None


class NoneAttnClsInferenceConfig(TinyInferenceConfig):
    @classmethod
    def get_neuron_config_cls(cls):
        return NoneAttnClsNeuronConfig


class NoneAttnClsForCausalLM(NeuronTinyForCausalLM):
    @classmethod
    def get_config_cls(cls):
        return NoneAttnClsInferenceConfig
