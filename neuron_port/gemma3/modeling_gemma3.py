"""Gemma 3 (text) family port for the portable torch target.

What sets it apart from Llama: embeddings scaled by sqrt(hidden_size); RMSNorms that scale by
``1 + weight``, four of them per layer (around attention and around the MLP); per-head q/k norms before
RoPE; scores scaled by ``query_pre_attn_scalar ** -0.5`` rather than ``head_dim ** -0.5``; sliding-window
and global layers interleaved by ``config.layer_types``, each kind with its own RoPE base (and linear
scaling on the global layers of the larger checkpoints); optional tanh soft-capping of the final
logits (Gemma 2 style); a GeLU-tanh gated MLP. Gemma 3 has no attention-score soft-capping: its
reference ignores ``attn_logit_softcapping`` (null in every checkpoint), and so does this port.

Static shapes: the KV cache is preallocated for ``neuron_config.batch_size`` x ``max_seq_len`` in every
layer, and sliding layers apply their window through the mask.
"""

import torch
from torch import nn
from transformers.activations import ACT2FN

from pytest_autoport.blocks import KVCache, RotaryEmbedding, apply_rotary
from pytest_autoport.blocks.decoder import CausalLM, DecoderModel, SwiGLUMLP, attend
from pytest_autoport.blocks.gemma_norm import GemmaRMSNorm
from pytest_autoport.blocks.rope import hf_rope_settings
from pytest_autoport.blocks.softcap import softcap


def layer_types(config) -> list[str]:
    types = getattr(config, "layer_types", None)
    if types is None:  # older configs: every ``sliding_window_pattern``-th layer is global
        pattern = getattr(config, "sliding_window_pattern", 6)
        types = [
            "full_attention" if (i + 1) % pattern == 0 else "sliding_attention"
            for i in range(config.num_hidden_layers)
        ]
    return types


def rope_for(config, layer_type) -> tuple[float, dict]:
    """(theta, RoPE parameters) of one kind of layer, across the transformers 4.x and 5.x spellings."""
    params = hf_rope_settings(config)
    if layer_type in params:
        return float(params[layer_type]["rope_theta"]), params[layer_type]
    if layer_type == "sliding_attention":
        return float(config.rope_local_base_freq), {}
    return float(config.rope_theta), getattr(config, "rope_scaling", None) or {}


def rotary_embedding(config, layer_type, head_dim) -> RotaryEmbedding:
    theta, params = rope_for(config, layer_type)
    scaled = params.get("rope_type", params.get("type", "default")) != "default"
    return RotaryEmbedding(head_dim, theta, params if scaled else None)


class NeuronGemma3ScaledWordEmbedding(nn.Embedding):
    def __init__(self, vocab_size, hidden_size):
        super().__init__(vocab_size, hidden_size)
        self.register_buffer("embed_scale", torch.tensor(hidden_size**0.5), persistent=False)

    def forward(self, input_ids):
        # the scale is rounded to the weights' dtype first: sqrt(3072) is 55.5 in bfloat16, as in HF
        return super().forward(input_ids) * self.embed_scale.to(self.weight.dtype)


class NeuronGemma3MLP(SwiGLUMLP):
    def __init__(self, config):
        super().__init__(config.hidden_size, config.intermediate_size, ACT2FN[config.hidden_activation])


class NeuronGemma3Attention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        if getattr(config, "use_bidirectional_attention", False):
            raise NotImplementedError("bidirectional Gemma 3 (EmbeddingGemma) is not a causal LM")
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.scaling = config.query_pre_attn_scalar**-0.5
        layer_type = layer_types(config)[layer_idx]
        self.sliding_window = config.sliding_window if layer_type == "sliding_attention" else None
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=bias)
        self.q_norm = GemmaRMSNorm(self.head_dim, config.rms_norm_eps)
        self.k_norm = GemmaRMSNorm(self.head_dim, config.rms_norm_eps)
        self.rotary = rotary_embedding(config, layer_type, self.head_dim)
        nc = config.neuron_config
        self.cache = KVCache(nc.batch_size, self.num_kv_heads, nc.max_seq_len, self.head_dim)

    def forward(self, hidden_states, position_ids, cache_len=None):
        batch, seq, _ = hidden_states.shape
        heads = (batch, seq, -1, self.head_dim)
        q = self.q_proj(hidden_states).view(heads).transpose(1, 2)
        k = self.k_proj(hidden_states).view(heads).transpose(1, 2)
        v = self.v_proj(hidden_states).view(heads).transpose(1, 2)
        q, k = self.q_norm(q), self.k_norm(k)
        cos, sin = self.rotary(position_ids, q.dtype)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)

        keys, values = self.cache.update(k, v, position_ids, cache_len)
        out = attend(q, keys, values, position_ids, scale=self.scaling, window=self.sliding_window)
        return self.o_proj(out)


class NeuronGemma3DecoderLayer(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.input_layernorm = GemmaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = NeuronGemma3Attention(config, layer_idx)
        self.post_attention_layernorm = GemmaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.pre_feedforward_layernorm = GemmaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = NeuronGemma3MLP(config)
        self.post_feedforward_layernorm = GemmaRMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, hidden_states, position_ids, cache_len=None):
        attn = self.self_attn(self.input_layernorm(hidden_states), position_ids, cache_len)
        hidden_states = hidden_states + self.post_attention_layernorm(attn)
        mlp = self.mlp(self.pre_feedforward_layernorm(hidden_states))
        return hidden_states + self.post_feedforward_layernorm(mlp)


class NeuronGemma3TextModel(DecoderModel):
    embedding_cls = NeuronGemma3ScaledWordEmbedding
    norm_cls = GemmaRMSNorm

    def __init__(self, config):
        super().__init__(config, NeuronGemma3DecoderLayer)


class NeuronGemma3ForCausalLM(CausalLM):
    """The layouts coincide with HF's; the LM head is tied to the (unscaled) embedding."""

    model_cls = NeuronGemma3TextModel

    def __init__(self, config):
        super().__init__(config)
        self.final_logit_softcapping = getattr(config, "final_logit_softcapping", None)

    def forward(self, input_ids, position_ids, cache_len=None):
        logits = self.lm_head(self.model(input_ids, position_ids, cache_len))
        return softcap(logits, self.final_logit_softcapping).float()
