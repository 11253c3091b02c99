"""Qwen3-MoE family port for the portable torch target: GQA attention with a per-head RMSNorm on
queries and keys (before RoPE), and a sparse mixture of SwiGLU experts in every ``decoder_sparse_step``-th
layer that ``mlp_only_layers`` does not name (the other layers keep a dense SwiGLU MLP). Routing is a
softmax over all experts, then the top-k, renormalised only when ``norm_topk_prob`` is set.

Static shapes: the KV cache is preallocated for ``neuron_config.batch_size`` x ``max_seq_len``, one
``forward(input_ids, position_ids, cache_len)`` serves context encoding and token generation, and the
experts are dispatched densely (see ``neuron_port/common/moe.py``).
"""

from torch import nn
from transformers.activations import ACT2FN

from neuron_port.common import KVCache, RMSNorm, RotaryEmbedding, apply_rotary
from neuron_port.common.decoder import CausalLM, DecoderModel, SwiGLUMLP, attend
from neuron_port.common.moe import MoEExperts, SparseMoeBlock, stack_checkpoint_experts
from neuron_port.common.rope import rope_parameters


def is_sparse_layer(config, layer_idx):
    return (
        layer_idx not in (config.mlp_only_layers or [])
        and config.num_experts > 0
        and (layer_idx + 1) % config.decoder_sparse_step == 0
    )


class NeuronQwen3MoeMLP(SwiGLUMLP):
    def __init__(self, config):
        super().__init__(config.hidden_size, config.intermediate_size, ACT2FN[config.hidden_act])


class NeuronQwen3MoeSparseMoeBlock(SparseMoeBlock):
    def __init__(self, config):
        experts = MoEExperts(
            config.num_experts, config.hidden_size, config.moe_intermediate_size, ACT2FN[config.hidden_act]
        )
        # HF hands the experts routing weights in the activations' dtype
        super().__init__(
            config.hidden_size,
            experts,
            config.num_experts_per_tok,
            normalize_top_k=config.norm_topk_prob,
            weights_in_input_dtype=True,
        )


class NeuronQwen3MoeAttention(nn.Module):
    def __init__(self, config):
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
        self.sliding_window = config.sliding_window  # None unless use_sliding_window
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


class NeuronQwen3MoeDecoderLayer(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = NeuronQwen3MoeAttention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        sparse = is_sparse_layer(config, layer_idx)
        self.mlp = NeuronQwen3MoeSparseMoeBlock(config) if sparse else NeuronQwen3MoeMLP(config)

    def forward(self, hidden_states, position_ids, cache_len=None):
        hidden_states = hidden_states + self.self_attn(
            self.input_layernorm(hidden_states), position_ids, cache_len
        )
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class NeuronQwen3MoeModel(DecoderModel):
    def __init__(self, config):
        super().__init__(config, NeuronQwen3MoeDecoderLayer)


class NeuronQwen3MoeForCausalLM(CausalLM):
    model_cls = NeuronQwen3MoeModel

    @staticmethod
    def convert_hf_to_neuron_state_dict(state_dict, config):
        """HF keys -> port keys. Checkpoints on the hub keep one gate/up/down projection per expert;
        transformers 5 stacks them as ``mlp.experts.gate_up_proj`` / ``down_proj``. Both are read."""
        converted = stack_checkpoint_experts(
            state_dict,
            config.num_hidden_layers,
            "model.layers.{}.mlp.experts",
            config.num_experts,
            "gate_proj", "up_proj", "down_proj",
        )  # fmt: skip
        return CausalLM.convert_hf_to_neuron_state_dict(converted, config)
