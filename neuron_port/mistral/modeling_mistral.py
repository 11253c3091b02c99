"""Mistral family port for the portable torch target: GQA attention with RoPE over a sliding window,
RMSNorm, SwiGLU MLP.

With ``config.sliding_window`` set (Mistral 7B v0.1), a query at position p attends to the keys at
p - window + 1 .. p only; ``None`` (v0.2 and later, Nemo) means plain causal attention. The KV cache is
preallocated for ``neuron_config.batch_size`` x ``max_seq_len`` and the window is applied by the mask,
so one ``forward(input_ids, position_ids, cache_len)`` serves context encoding and token generation.
"""

from torch import nn
from transformers.activations import ACT2FN

from pytest_autoport.blocks import KVCache, RotaryEmbedding, apply_rotary
from pytest_autoport.blocks.decoder import CausalLM, DecoderLayer, DecoderModel, SwiGLUMLP, attend
from pytest_autoport.blocks.rope import rope_parameters


class NeuronMistralMLP(SwiGLUMLP):
    def __init__(self, config):
        super().__init__(config.hidden_size, config.intermediate_size, ACT2FN[config.hidden_act])


class NeuronMistralAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
        self.sliding_window = getattr(config, "sliding_window", None)
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=False)
        theta, scaling = rope_parameters(config)
        self.rotary = RotaryEmbedding(self.head_dim, theta, scaling)
        nc = config.neuron_config
        self.cache = KVCache(nc.batch_size, self.num_kv_heads, nc.max_seq_len, self.head_dim)

    def forward(self, hidden_states, position_ids, cache_len=None):
        batch, seq, _ = hidden_states.shape
        heads = (batch, seq, -1, self.head_dim)
        q = self.q_proj(hidden_states).view(heads).transpose(1, 2)
        k = self.k_proj(hidden_states).view(heads).transpose(1, 2)
        v = self.v_proj(hidden_states).view(heads).transpose(1, 2)
        cos, sin = self.rotary(position_ids, q.dtype)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        keys, values = self.cache.update(k, v, position_ids, cache_len)
        out = attend(q, keys, values, position_ids, scale=self.head_dim**-0.5, window=self.sliding_window)
        return self.o_proj(out)


class NeuronMistralDecoderLayer(DecoderLayer):
    def __init__(self, config, layer_idx):
        super().__init__(config, NeuronMistralAttention(config), NeuronMistralMLP(config))


class NeuronMistralModel(DecoderModel):
    def __init__(self, config):
        super().__init__(config, NeuronMistralDecoderLayer)


class NeuronMistralForCausalLM(CausalLM):
    """The layouts coincide with HF's; a tied LM head, if any, is filled in by the conversion."""

    model_cls = NeuronMistralModel
