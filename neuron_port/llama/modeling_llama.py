"""Llama family port for the portable torch target: GQA attention, RoPE, RMSNorm, SwiGLU MLP.

Static shapes: the KV cache is preallocated for ``neuron_config.batch_size`` x ``max_seq_len``.
One ``forward(input_ids, position_ids, cache_len)`` serves both graphs: context encoding (a whole
bucket of prompt positions) and token generation (one position per sequence); each writes its keys
and values into the cache at ``position_ids`` and attends to cache slots up to its own position,
reading only the first ``cache_len`` slots (the bucket's reach).
"""

import torch.nn.functional as F
from torch import nn

from pytest_autoport.blocks import KVCache, RMSNorm, RotaryEmbedding, apply_rotary
from pytest_autoport.blocks.decoder import CausalLM, DecoderModel, SwiGLUMLP, attend
from pytest_autoport.blocks.rope import rope_parameters


class NeuronLlamaMLP(SwiGLUMLP):
    def __init__(self, config):
        super().__init__(
            config.hidden_size, config.intermediate_size, bias=getattr(config, "mlp_bias", False)
        )

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class NeuronLlamaAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
        bias = getattr(config, "attention_bias", False)
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=bias)
        theta, scaling = rope_parameters(config)
        self.rotary = RotaryEmbedding(self.head_dim, theta, scaling)
        nc = config.neuron_config
        self.cache = KVCache(nc.batch_size, self.num_kv_heads, nc.max_seq_len, self.head_dim)

    def forward(self, hidden_states, position_ids, cache_len=None):
        batch, seq, _ = hidden_states.shape
        q = self.q_proj(hidden_states).view(batch, seq, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(hidden_states).view(batch, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(hidden_states).view(batch, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = self.rotary(position_ids, q.dtype)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        keys, values = self.cache.update(k, v, position_ids, cache_len)
        return self.o_proj(attend(q, keys, values, position_ids, scale=self.head_dim**-0.5))


class NeuronLlamaDecoderLayer(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = NeuronLlamaAttention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = NeuronLlamaMLP(config)

    def forward(self, hidden_states, position_ids, cache_len=None):
        hidden_states = hidden_states + self.self_attn(
            self.input_layernorm(hidden_states), position_ids, cache_len
        )
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class NeuronLlamaModel(DecoderModel):
    def __init__(self, config):
        super().__init__(config, NeuronLlamaDecoderLayer)


class NeuronLlamaForCausalLM(CausalLM):
    model_cls = NeuronLlamaModel

    @staticmethod
    def convert_hf_to_neuron_state_dict(state_dict, config):
        """HF keys -> port keys. The layouts coincide; only a tied LM head needs filling in."""
        converted = CausalLM.convert_hf_to_neuron_state_dict(state_dict, config)
        return converted
