"""Qwen3 family port for the portable torch target: Llama's layout plus a per-head RMSNorm on queries
and keys (``q_norm`` / ``k_norm``), applied before RoPE; optional sliding-window layers.

Static shapes: the KV cache is preallocated for ``neuron_config.batch_size`` x ``max_seq_len``, and one
``forward(input_ids, position_ids, cache_len)`` serves both context encoding and token generation.
"""

import torch
from torch import nn
from transformers.activations import ACT2FN

from neuron_port.common import KVCache, RMSNorm, RotaryEmbedding, apply_rotary, causal_cache_mask, repeat_kv
from neuron_port.common.rope import rope_parameters


class NeuronQwen3MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class NeuronQwen3Attention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=bias)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        layer_types = getattr(config, "layer_types", None)
        sliding = layer_types is not None and layer_types[layer_idx] == "sliding_attention"
        self.sliding_window = config.sliding_window if sliding else None
        theta, scaling = rope_parameters(config)
        self.rotary = RotaryEmbedding(self.head_dim, theta, scaling)
        nc = config.neuron_config
        self.cache = KVCache(nc.batch_size, self.num_kv_heads, nc.max_seq_len, self.head_dim)

    def forward(self, hidden_states, position_ids, cache_len=None):
        batch, seq, _ = hidden_states.shape
        q = self.q_norm(self.q_proj(hidden_states).view(batch, seq, self.num_heads, self.head_dim)).transpose(1, 2)
        k = self.k_norm(self.k_proj(hidden_states).view(batch, seq, self.num_kv_heads, self.head_dim)).transpose(1, 2)
        v = self.v_proj(hidden_states).view(batch, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = self.rotary(position_ids, q.dtype)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)

        keys, values = self.cache.update(k, v, position_ids, cache_len)
        groups = self.num_heads // self.num_kv_heads
        keys, values = repeat_kv(keys, groups), repeat_kv(values, groups)
        scores = (q @ keys.transpose(-1, -2)) * self.head_dim**-0.5
        mask = causal_cache_mask(position_ids, keys.shape[2], self.sliding_window)
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
        out = (probs @ values).transpose(1, 2).reshape(batch, seq, -1)
        return self.o_proj(out)


class NeuronQwen3DecoderLayer(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = NeuronQwen3Attention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = NeuronQwen3MLP(config)

    def forward(self, hidden_states, position_ids, cache_len=None):
        hidden_states = hidden_states + self.self_attn(self.input_layernorm(hidden_states), position_ids, cache_len)
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class NeuronQwen3Model(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(NeuronQwen3DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, input_ids, position_ids, cache_len=None):
        hidden_states = self.embed_tokens(input_ids)
        for layer in self.layers:
            hidden_states = layer(hidden_states, position_ids, cache_len)
        return self.norm(hidden_states)


class NeuronQwen3ForCausalLM(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.model = NeuronQwen3Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def forward(self, input_ids, position_ids, cache_len=None):
        return self.lm_head(self.model(input_ids, position_ids, cache_len)).float()

    @staticmethod
    def convert_hf_to_neuron_state_dict(state_dict, config):
        """HF keys -> port keys. The layouts coincide; a tied LM head (the small Qwen3s) is filled in."""
        converted = dict(state_dict)
        if "lm_head.weight" not in converted:
            converted["lm_head.weight"] = state_dict["model.embed_tokens.weight"]
        return converted
