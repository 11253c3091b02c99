"""A small Llama port written the way an NxDI user writes one: its own config classes, decoder
layer, model and conversion, on NxDI's base classes and NxD's parallel layers.

Judged by ``port_specs/llama_nxdi_port.toml`` (target nxdi). Kernels, fused QKV and sequence
parallelism are left out: the plain path is what CPU mode runs.
"""

from __future__ import annotations

import torch
from neuronx_distributed.parallel_layers.layers import (
    ColumnParallelLinear,
    ParallelEmbedding,
    RowParallelLinear,
)
from neuronx_distributed.utils import cpu_mode
from neuronx_distributed_inference.models.config import InferenceConfig, NeuronConfig
from neuronx_distributed_inference.models.model_base import NeuronBaseForCausalLM, NeuronBaseModel
from neuronx_distributed_inference.modules.attention.attention_base import NeuronAttentionBase
from neuronx_distributed_inference.modules.attention.utils import RotaryEmbedding
from neuronx_distributed_inference.modules.custom_calls import CustomRMSNorm
from torch import nn
from torch.nn import functional as F


class TinyLlamaNeuronConfig(NeuronConfig):
    """No settings of its own; a port keeps one to grow into."""


class TinyLlamaInferenceConfig(InferenceConfig):
    def add_derived_config(self):
        self.num_cores_per_group = 1

    def get_required_attributes(self) -> list[str]:
        return [
            "hidden_size",
            "intermediate_size",
            "num_attention_heads",
            "num_hidden_layers",
            "num_key_value_heads",
            "vocab_size",
            "max_position_embeddings",
            "rope_theta",
            "rms_norm_eps",
        ]

    @classmethod
    def get_neuron_config_cls(cls):
        return TinyLlamaNeuronConfig


class RMSNorm(nn.Module):
    """Llama's RMSNorm in plain torch (CPU mode); NxDI's CustomRMSNorm kernel on device."""

    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, x):
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * x.to(dtype)


def rms_norm(hidden_size: int, eps: float) -> nn.Module:
    return RMSNorm(hidden_size, eps) if cpu_mode() else CustomRMSNorm(hidden_size, eps)


class TinyLlamaMLP(nn.Module):
    def __init__(self, config: TinyLlamaInferenceConfig):
        super().__init__()
        dtype = config.neuron_config.torch_dtype
        h, i = config.hidden_size, config.intermediate_size
        bias = getattr(config, "mlp_bias", False)  # HF Llama's mlp_bias; the row-parallel bias is added once
        self.gate_proj = ColumnParallelLinear(h, i, bias=bias, gather_output=False, dtype=dtype)
        self.up_proj = ColumnParallelLinear(h, i, bias=bias, gather_output=False, dtype=dtype)
        self.down_proj = RowParallelLinear(i, h, bias=bias, input_is_parallel=True, dtype=dtype)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class TinyLlamaAttention(NeuronAttentionBase):
    def __init__(self, config: TinyLlamaInferenceConfig):
        head_dim = config.hidden_size // config.num_attention_heads
        super().__init__(
            config=config,
            hidden_size=config.hidden_size,
            num_attention_heads=config.num_attention_heads,
            num_key_value_heads=config.num_key_value_heads,
            head_dim=head_dim,
            rotary_emb=RotaryEmbedding(
                dim=head_dim, max_position_embeddings=config.max_position_embeddings, base=config.rope_theta
            ),
            num_cores_per_group=config.num_cores_per_group,
            rms_norm_eps=config.rms_norm_eps,
        )


class TinyLlamaDecoderLayer(nn.Module):
    def __init__(self, config: TinyLlamaInferenceConfig):
        super().__init__()
        self.self_attn = TinyLlamaAttention(config)
        self.mlp = TinyLlamaMLP(config)
        self.input_layernorm = rms_norm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = rms_norm(config.hidden_size, config.rms_norm_eps)

    def forward(self, hidden_states, attention_mask=None, position_ids=None, past_key_value=None, **kwargs):
        attn = self.self_attn(
            hidden_states=self.input_layernorm(hidden_states),
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_value=past_key_value,
            **kwargs,
        )
        hidden_states = hidden_states + attn.hidden_states
        hidden_states = hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))
        return (hidden_states, attn.present_key_value, attn.cos_cache, attn.sin_cache, None)


class TinyLlamaModel(NeuronBaseModel):
    def setup_attr_for_model(self, config: TinyLlamaInferenceConfig):
        self.on_device_sampling = config.neuron_config.on_device_sampling_config is not None
        self.tp_degree = config.neuron_config.tp_degree
        self.hidden_size = config.hidden_size
        self.num_attention_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.max_batch_size = config.neuron_config.max_batch_size
        self.buckets = config.neuron_config.buckets

    def init_model(self, config: TinyLlamaInferenceConfig):
        dtype = config.neuron_config.torch_dtype
        self.padding_idx = getattr(config, "pad_token_id", None)
        self.vocab_size = config.vocab_size
        self.embed_tokens = ParallelEmbedding(
            config.vocab_size, config.hidden_size, self.padding_idx, dtype=dtype, shard_across_embedding=True
        )
        self.layers = nn.ModuleList(TinyLlamaDecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = rms_norm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = ColumnParallelLinear(
            config.hidden_size,
            config.vocab_size,
            bias=False,
            gather_output=not self.on_device_sampling,
            dtype=dtype,
        )


class TinyLlamaForCausalLM(NeuronBaseForCausalLM):
    _model_cls = TinyLlamaModel

    @staticmethod
    def load_hf_model(model_path, **kwargs):
        from transformers import LlamaForCausalLM

        return LlamaForCausalLM.from_pretrained(model_path, **kwargs)

    @staticmethod
    def convert_hf_to_neuron_state_dict(state_dict: dict, config: InferenceConfig) -> dict:
        """HF names already match (NxDI strips ``model.``); attention needs its rank tensors."""
        tp = config.neuron_config.tp_degree
        for i in range(config.num_hidden_layers):
            state_dict[f"layers.{i}.self_attn.rank_util.rank"] = torch.arange(0, tp, dtype=torch.int32)
        state_dict["rank_util.rank"] = torch.arange(0, tp, dtype=torch.int32)
        return state_dict

    @staticmethod
    def update_state_dict_for_tied_weights(state_dict):
        state_dict["lm_head.weight"] = state_dict["embed_tokens.weight"].clone()

    @classmethod
    def get_config_cls(cls):
        return TinyLlamaInferenceConfig
