"""GPT-OSS port for the portable torch target: attention with learned sinks, alternating sliding-window and
full attention layers, YaRN RoPE, and a top-k mixture of experts with biases and a clamped SwiGLU whose
expert weights arrive MXFP4-quantised and are dequantised at load.

Static shapes: every expert runs on every token and the router's weights (zero for the experts a token
does not use) combine them, so no graph depends on the routing.
"""

import torch
from torch import nn

from pytest_autoport.blocks import KVCache, apply_rotary, causal_cache_mask, repeat_kv
from pytest_autoport.blocks.decoder import CausalLM, DecoderLayer, DecoderModel
from pytest_autoport.blocks.gpt_oss_rope import ScaledRotaryEmbedding

# e2m1 value of each 4-bit code: bit 3 is the sign, bits 0-2 index the magnitude
FP4_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)


def dequantize_mxfp4(blocks: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """MXFP4 -> float32. blocks: uint8 [..., groups, 16], two codes a byte, the block's even element in the
    low nibble; scales: uint8 [..., groups], e8m0 (2 ** (scale - 127)) per block of 32. -> [..., groups * 32]."""
    codes = torch.stack((blocks & 0x0F, blocks >> 4), dim=-1).int()
    values = torch.tensor(FP4_VALUES)[codes].flatten(-2)
    return torch.ldexp(values, scales.int()[..., None] - 127).flatten(-2)


class NeuronGptOssRMSNorm(nn.Module):
    """RMSNorm that applies its weight before casting back (GPT-OSS keeps the product in float32)."""

    def __init__(self, hidden_size, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x):
        dtype = x.dtype
        x = x.float()
        return (self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))).to(dtype)


class NeuronGptOssAttention(nn.Module):
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
        self.sinks = nn.Parameter(torch.zeros(self.num_heads))
        sliding = config.layer_types[layer_idx] == "sliding_attention"
        self.sliding_window = config.sliding_window if sliding else None
        self.rotary = ScaledRotaryEmbedding(config, self.head_dim)
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
        # each head's sink is one more logit in the softmax, for a slot that holds no value
        sinks = self.sinks.to(scores.dtype).view(1, -1, 1, 1).expand(batch, -1, seq, 1)
        logits = torch.cat((scores, sinks), dim=-1)
        logits = logits - logits.amax(dim=-1, keepdim=True)
        probs = torch.softmax(logits, dim=-1, dtype=logits.dtype)[..., :-1]
        out = (probs.to(values.dtype) @ values).transpose(1, 2).reshape(batch, seq, -1)
        return self.o_proj(out)


def swiglu_settings(config) -> tuple[float, float]:
    """(alpha, limit) of the clamped SwiGLU as the installed transformers applies them: read from the
    config from transformers 5 on; transformers 4.x's experts use 1.702 and 7.0 whatever the config says."""
    import transformers

    if int(transformers.__version__.split(".")[0]) >= 5:
        return config.swiglu_alpha, config.swiglu_limit
    return 1.702, 7.0


class NeuronGptOssExperts(nn.Module):
    """The experts' weights stacked, in HF's [experts, in, out] layout, gate and up interleaved."""

    def __init__(self, config):
        super().__init__()
        experts, hidden, inter = config.num_local_experts, config.hidden_size, config.intermediate_size
        self.gate_up_proj = nn.Parameter(torch.zeros(experts, hidden, 2 * inter))
        self.gate_up_proj_bias = nn.Parameter(torch.zeros(experts, 2 * inter))
        self.down_proj = nn.Parameter(torch.zeros(experts, inter, hidden))
        self.down_proj_bias = nn.Parameter(torch.zeros(experts, hidden))
        self.alpha, self.limit = swiglu_settings(config)

    def forward(self, hidden_states, routing_weights):
        """hidden_states [tokens, hidden], routing_weights [tokens, experts] -> [tokens, hidden]."""
        hidden = hidden_states.expand(self.gate_up_proj.shape[0], -1, -1)
        gate_up = torch.bmm(hidden, self.gate_up_proj) + self.gate_up_proj_bias[:, None]
        gate, up = gate_up[..., 0::2], gate_up[..., 1::2]
        gate = gate.clamp(max=self.limit)
        up = up.clamp(min=-self.limit, max=self.limit)
        glu = gate * torch.sigmoid(gate * self.alpha)
        out = torch.bmm((up + 1) * glu, self.down_proj) + self.down_proj_bias[:, None]
        return (out * routing_weights.T[..., None]).sum(dim=0)


class NeuronGptOssMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.router = nn.Linear(config.hidden_size, config.num_local_experts, bias=True)
        self.experts = NeuronGptOssExperts(config)

    def forward(self, hidden_states):
        batch, seq, hidden = hidden_states.shape
        tokens = hidden_states.reshape(-1, hidden)
        router_logits = self.router(tokens)
        # a token's weights: the softmax of its top-k logits, zero for the other experts
        top_logits, top_experts = torch.topk(router_logits, self.top_k, dim=-1)
        top_weights = torch.softmax(top_logits, dim=-1, dtype=top_logits.dtype)
        routing_weights = torch.zeros_like(router_logits).scatter(-1, top_experts, top_weights)
        return self.experts(tokens, routing_weights).reshape(batch, seq, hidden)


class NeuronGptOssDecoderLayer(DecoderLayer):
    norm_cls = NeuronGptOssRMSNorm

    def __init__(self, config, layer_idx):
        super().__init__(config, NeuronGptOssAttention(config, layer_idx), NeuronGptOssMLP(config))


class NeuronGptOssModel(DecoderModel):
    norm_cls = NeuronGptOssRMSNorm

    def __init__(self, config):
        super().__init__(config, NeuronGptOssDecoderLayer)


class NeuronGptOssForCausalLM(CausalLM):
    model_cls = NeuronGptOssModel

    @staticmethod
    def convert_hf_to_neuron_state_dict(state_dict, config):
        """HF keys -> port keys. MXFP4 expert weights (``<name>_blocks`` + ``<name>_scales``, stored as
        [experts, out, in]) become the float ``<name>`` in HF's [experts, in, out]; float checkpoints pass through."""
        converted = {}
        for key in list(state_dict.keys()):
            if key.endswith("_blocks"):
                name = key.removesuffix("_blocks")
                weight = dequantize_mxfp4(state_dict[key], state_dict[f"{name}_scales"])
                converted[name] = weight.transpose(-1, -2).contiguous()
            elif not key.endswith("_scales"):
                converted[key] = state_dict[key]
        return CausalLM.convert_hf_to_neuron_state_dict(converted, config)
