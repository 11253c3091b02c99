"""Qwen3 family port for the portable torch target: Llama's layout plus a per-head RMSNorm on queries
and keys (``q_norm`` / ``k_norm``), applied before RoPE; optional sliding-window layers.

Static shapes: the KV cache is preallocated for ``neuron_config.batch_size`` x ``max_seq_len``, and one
``forward(input_ids, position_ids, cache_len)`` serves both context encoding and token generation.
"""

from torch import nn
from transformers.activations import ACT2FN

from pytest_autoport.blocks import KVCache, RMSNorm, RotaryEmbedding, apply_rotary
from pytest_autoport.blocks.decoder import CausalLM, DecoderLayer, DecoderModel, SwiGLUMLP, attend
from pytest_autoport.blocks.rope import rope_parameters


class NeuronQwen3MLP(SwiGLUMLP):
    def __init__(self, config):
        super().__init__(config.hidden_size, config.intermediate_size, ACT2FN[config.hidden_act])


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
        heads = (batch, seq, -1, self.head_dim)
        q = self.q_norm(self.q_proj(hidden_states).view(heads)).transpose(1, 2)
        k = self.k_norm(self.k_proj(hidden_states).view(heads)).transpose(1, 2)
        v = self.v_proj(hidden_states).view(heads).transpose(1, 2)
        cos, sin = self.rotary(position_ids, q.dtype)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        keys, values = self.cache.update(k, v, position_ids, cache_len)
        out = attend(q, keys, values, position_ids, scale=self.head_dim**-0.5, window=self.sliding_window)
        return self.o_proj(out)


class NeuronQwen3DecoderLayer(DecoderLayer):
    def __init__(self, config, layer_idx):
        super().__init__(config, NeuronQwen3Attention(config, layer_idx), NeuronQwen3MLP(config))


class NeuronQwen3Model(DecoderModel):
    def __init__(self, config):
        super().__init__(config, NeuronQwen3DecoderLayer)


class NeuronQwen3ForCausalLM(CausalLM):
    """The layouts coincide with HF's; a tied LM head (the small Qwen3s) is filled in by the conversion."""

    model_cls = NeuronQwen3Model
