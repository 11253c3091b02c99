"""Mixtral family port for the portable torch target: Mistral's GQA attention (RoPE, optional sliding
window) with every MLP replaced by a sparse mixture of SwiGLU experts, top-k routed, the top-k
weights renormalised to sum to 1.

Static shapes: the KV cache is preallocated for ``neuron_config.batch_size`` x ``max_seq_len``, one
``forward(input_ids, position_ids, cache_len)`` serves context encoding and token generation, and the
experts are dispatched densely (see ``neuron_port/common/moe.py``).
"""

import torch
from torch import nn
from transformers.activations import ACT2FN

from neuron_port.common import KVCache, RMSNorm, RotaryEmbedding, apply_rotary, causal_cache_mask, repeat_kv
from neuron_port.common.moe import MoEExperts, SparseMoeBlock, stack_experts
from neuron_port.common.rope import rope_parameters


class NeuronMixtralSparseMoeBlock(SparseMoeBlock):
    def __init__(self, config):
        experts = MoEExperts(
            config.num_local_experts, config.hidden_size, config.intermediate_size, ACT2FN[config.hidden_act]
        )
        super().__init__(config.hidden_size, experts, config.num_experts_per_tok)


class NeuronMixtralAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=False)
        self.sliding_window = getattr(config, "sliding_window", None)
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
        groups = self.num_heads // self.num_kv_heads
        keys, values = repeat_kv(keys, groups), repeat_kv(values, groups)
        scores = (q @ keys.transpose(-1, -2)) * self.head_dim**-0.5
        mask = causal_cache_mask(position_ids, keys.shape[2], self.sliding_window)
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
        out = (probs @ values).transpose(1, 2).reshape(batch, seq, -1)
        return self.o_proj(out)


class NeuronMixtralDecoderLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = NeuronMixtralAttention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = NeuronMixtralSparseMoeBlock(config)

    def forward(self, hidden_states, position_ids, cache_len=None):
        hidden_states = hidden_states + self.self_attn(self.input_layernorm(hidden_states), position_ids, cache_len)
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class NeuronMixtralModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(NeuronMixtralDecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, input_ids, position_ids, cache_len=None):
        hidden_states = self.embed_tokens(input_ids)
        for layer in self.layers:
            hidden_states = layer(hidden_states, position_ids, cache_len)
        return self.norm(hidden_states)


class NeuronMixtralForCausalLM(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.model = NeuronMixtralModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def forward(self, input_ids, position_ids, cache_len=None):
        return self.lm_head(self.model(input_ids, position_ids, cache_len)).float()

    @staticmethod
    def convert_hf_to_neuron_state_dict(state_dict, config):
        """HF keys -> port keys. Checkpoints on the hub keep one w1 (gate) / w3 (up) / w2 (down) per expert
        under ``block_sparse_moe``; transformers 5 stacks them under ``mlp.experts``. Both are read."""
        converted = {}
        for key in list(state_dict.keys()):
            if ".experts." in key and not key.endswith(("gate_up_proj", "down_proj")):
                continue  # one expert's tensor: stacked per layer below
            converted[key.replace(".block_sparse_moe.", ".mlp.")] = state_dict[key]
        for i in range(config.num_hidden_layers):
            legacy = f"model.layers.{i}.block_sparse_moe.experts"
            if f"{legacy}.0.w1.weight" in state_dict:
                stacked = stack_experts(state_dict, legacy, config.num_local_experts, "w1", "w3", "w2")
                converted.update({k.replace(".block_sparse_moe.", ".mlp."): v for k, v in stacked.items()})
        if "lm_head.weight" not in converted:
            converted["lm_head.weight"] = state_dict["model.embed_tokens.weight"]
        return converted
