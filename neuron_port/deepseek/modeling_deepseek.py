"""DeepSeek V3 port for the portable torch target: multi-latent attention (MLA) with YaRN RoPE,
a dense SwiGLU MLP in the first ``first_k_dense_replace`` layers, and routed + shared experts after.

MLA: queries come through a low-rank bottleneck (``q_a_proj`` -> ``q_a_layernorm`` -> ``q_b_proj``, or
one ``q_proj`` when ``q_lora_rank`` is None). Keys and values come from one compressed latent of
``kv_lora_rank`` dims plus a single rotary key of ``qk_rope_head_dim`` dims shared by all heads
(``kv_a_proj_with_mqa``); ``kv_b_proj`` expands the latent into each head's un-rotated key part and value.
Only the last ``qk_rope_head_dim`` dims of every query/key head are rotated.

The KV cache holds the compressed latent (after ``kv_a_layernorm``) and the rotated shared key, as
real MLA ports do (576 values per token and layer for V3, against 40960 for full per-head keys and
values); each step expands the cached slots it reads through ``kv_b_proj``.

Routing (V3): sigmoid scores; experts are chosen among the ``topk_group`` best of ``n_group`` groups
(a group scores the sum of its two best experts) by score plus ``e_score_correction_bias``, weighted
by their bias-free score, renormalised when ``norm_topk_prob``, times ``routed_scaling_factor``.
Every expert runs on every token and unrouted ones get weight 0: static shapes, no data-dependent
gather.
"""

import torch
import torch.nn.functional as F
from torch import nn

from pytest_autoport.blocks import RMSNorm, apply_rotary
from pytest_autoport.blocks.decoder import CausalLM, DecoderLayer, DecoderModel, SwiGLUMLP, attend
from pytest_autoport.blocks.moe import stack_checkpoint_experts
from pytest_autoport.blocks.rope import rope_parameters
from pytest_autoport.blocks.yarn import YarnRotaryEmbedding, yarn_softmax_scale


def apply_interleaved_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE over adjacent pairs (x0, x1), (x2, x3), ...; the rotated evens come out first, then the
    rotated odds, as HF lays them out (queries and keys alike, so their dot products are unchanged).
    x: [batch, heads, seq, dim]; cos/sin: [batch, seq, dim] as cat(freqs, freqs)."""
    half = cos.shape[-1] // 2
    cos, sin = cos[..., :half].unsqueeze(1), sin[..., :half].unsqueeze(1)
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.cat((even * cos - odd * sin, odd * cos + even * sin), dim=-1)


class MLACache(nn.Module):
    """Preallocated cache of the compressed KV latent [batch, 1, max_seq_len, kv_lora_rank] and the
    rotated shared key [batch, 1, max_seq_len, qk_rope_head_dim], written at ``position_ids``."""

    kv_cache_names = ("latent_cache", "k_rope_cache")

    def __init__(self, batch_size: int, max_seq_len: int, kv_lora_rank: int, rope_dim: int):
        super().__init__()
        self.register_buffer(
            "latent_cache", torch.zeros(batch_size, 1, max_seq_len, kv_lora_rank), persistent=False
        )
        self.register_buffer(
            "k_rope_cache", torch.zeros(batch_size, 1, max_seq_len, rope_dim), persistent=False
        )

    def update(self, latent, k_rope, position_ids, cache_len=None):
        batch = latent.shape[0]
        index = position_ids[:batch, None, :, None]
        self.latent_cache[:batch].scatter_(2, index.expand_as(latent), latent.to(self.latent_cache.dtype))
        self.k_rope_cache[:batch].scatter_(2, index.expand_as(k_rope), k_rope.to(self.k_rope_cache.dtype))
        end = self.latent_cache.shape[2] if cache_len is None else cache_len
        return self.latent_cache[:batch, :, :end], self.k_rope_cache[:batch, :, :end]


class NeuronDeepseekV3MLP(SwiGLUMLP):
    def __init__(self, config, intermediate_size=None):
        super().__init__(config.hidden_size, intermediate_size or config.intermediate_size)


class NeuronDeepseekV3TopkRouter(nn.Module):
    """Dense routing weights [tokens, n_routed_experts]: zero except for each token's top-k experts."""

    def __init__(self, config):
        super().__init__()
        self.num_experts = config.n_routed_experts
        self.top_k = config.num_experts_per_tok
        self.n_group = config.n_group
        self.topk_group = config.topk_group
        self.norm_topk_prob = config.norm_topk_prob
        self.routed_scaling_factor = config.routed_scaling_factor
        self.weight = nn.Parameter(torch.zeros(self.num_experts, config.hidden_size))
        self.register_buffer("e_score_correction_bias", torch.zeros(self.num_experts))

    def forward(self, hidden_states):
        hidden_states = hidden_states.reshape(-1, hidden_states.shape[-1])
        scores = F.linear(hidden_states.float(), self.weight.float()).sigmoid()
        biased = scores + self.e_score_correction_bias
        grouped = biased.view(-1, self.n_group, self.num_experts // self.n_group)
        group_scores = grouped.topk(2, dim=-1).values.sum(dim=-1)
        best_groups = group_scores.topk(self.topk_group, dim=-1).indices
        group_mask = torch.zeros_like(group_scores).scatter(1, best_groups, 1.0).bool()
        expert_mask = group_mask[:, :, None].expand_as(grouped).reshape(-1, self.num_experts)
        chosen = biased.masked_fill(~expert_mask, float("-inf")).topk(self.top_k, dim=-1).indices
        weights = scores.gather(1, chosen)
        if self.norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        weights = weights * self.routed_scaling_factor
        return torch.zeros_like(scores).scatter(1, chosen, weights)


class NeuronDeepseekV3Experts(nn.Module):
    """All routed experts stacked: gate_up_proj [E, 2 * moe_intermediate, hidden], down_proj [E, hidden, moe_intermediate]."""

    def __init__(self, config):
        super().__init__()
        experts, hidden, inter = config.n_routed_experts, config.hidden_size, config.moe_intermediate_size
        self.gate_up_proj = nn.Parameter(torch.zeros(experts, 2 * inter, hidden))
        self.down_proj = nn.Parameter(torch.zeros(experts, hidden, inter))

    def forward(self, hidden_states, routing_weights):
        """hidden_states [tokens, hidden], routing_weights [tokens, E] (float32) -> [tokens, hidden]."""
        gate, up = torch.einsum("th,eih->tei", hidden_states, self.gate_up_proj).chunk(2, dim=-1)
        out = torch.einsum("tei,ehi->teh", F.silu(gate) * up, self.down_proj)
        # HF weights each expert's output and sums over experts in float32
        return (out.float() * routing_weights[..., None]).sum(dim=1).to(hidden_states.dtype)


class NeuronDeepseekV3MoE(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.gate = NeuronDeepseekV3TopkRouter(config)
        self.experts = NeuronDeepseekV3Experts(config)
        self.shared_experts = NeuronDeepseekV3MLP(
            config, config.moe_intermediate_size * config.n_shared_experts
        )

    def forward(self, hidden_states):
        flat = hidden_states.reshape(-1, hidden_states.shape[-1])
        routed = self.experts(flat, self.gate(flat)).view_as(hidden_states)
        return routed + self.shared_experts(hidden_states)


class NeuronDeepseekV3Attention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.q_lora_rank = config.q_lora_rank
        self.kv_lora_rank = config.kv_lora_rank
        self.qk_nope_head_dim = config.qk_nope_head_dim
        self.qk_rope_head_dim = config.qk_rope_head_dim
        self.qk_head_dim = config.qk_nope_head_dim + config.qk_rope_head_dim
        self.v_head_dim = config.v_head_dim
        bias = config.attention_bias
        hidden = config.hidden_size
        if self.q_lora_rank is None:
            self.q_proj = nn.Linear(hidden, self.num_heads * self.qk_head_dim, bias=False)
        else:
            self.q_a_proj = nn.Linear(hidden, self.q_lora_rank, bias=bias)
            self.q_a_layernorm = RMSNorm(self.q_lora_rank)
            self.q_b_proj = nn.Linear(self.q_lora_rank, self.num_heads * self.qk_head_dim, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(hidden, self.kv_lora_rank + self.qk_rope_head_dim, bias=bias)
        self.kv_a_layernorm = RMSNorm(self.kv_lora_rank)
        self.kv_b_proj = nn.Linear(
            self.kv_lora_rank, self.num_heads * (self.qk_nope_head_dim + self.v_head_dim), bias=False
        )
        self.o_proj = nn.Linear(self.num_heads * self.v_head_dim, hidden, bias=bias)

        theta, scaling = rope_parameters(config)
        max_positions = config.max_position_embeddings
        self.rotary_emb = YarnRotaryEmbedding(self.qk_rope_head_dim, theta, scaling, max_positions)
        self.rotate = apply_interleaved_rotary if getattr(config, "rope_interleave", True) else apply_rotary
        self.scaling = yarn_softmax_scale(self.qk_head_dim, scaling, max_positions)
        nc = config.neuron_config
        self.cache = MLACache(nc.batch_size, nc.max_seq_len, self.kv_lora_rank, self.qk_rope_head_dim)

    def forward(self, hidden_states, position_ids, cache_len=None):
        batch, seq, _ = hidden_states.shape
        if self.q_lora_rank is None:
            q = self.q_proj(hidden_states)
        else:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(hidden_states)))
        q = q.view(batch, seq, self.num_heads, self.qk_head_dim).transpose(1, 2)
        q_nope, q_rope = q.split([self.qk_nope_head_dim, self.qk_rope_head_dim], dim=-1)

        latent, k_rope = self.kv_a_proj_with_mqa(hidden_states).split(
            [self.kv_lora_rank, self.qk_rope_head_dim], dim=-1
        )
        latent = self.kv_a_layernorm(latent)[:, None]
        k_rope = k_rope[:, None]

        cos, sin = self.rotary_emb(position_ids, q.dtype)
        q_rope = self.rotate(q_rope, cos, sin)
        k_rope = self.rotate(k_rope, cos, sin)

        latent, k_rope = self.cache.update(latent, k_rope, position_ids, cache_len)
        slots = latent.shape[2]
        kv = self.kv_b_proj(latent[:, 0]).view(batch, slots, self.num_heads, -1).transpose(1, 2)
        k_nope, values = kv.split([self.qk_nope_head_dim, self.v_head_dim], dim=-1)
        keys = torch.cat((k_nope, k_rope.expand(-1, self.num_heads, -1, -1)), dim=-1)
        query = torch.cat((q_nope, q_rope), dim=-1)
        return self.o_proj(attend(query, keys, values, position_ids, scale=self.scaling))


class NeuronDeepseekV3DecoderLayer(DecoderLayer):
    def __init__(self, config, layer_idx):
        dense = layer_idx < config.first_k_dense_replace
        mlp = NeuronDeepseekV3MLP(config) if dense else NeuronDeepseekV3MoE(config)
        super().__init__(config, NeuronDeepseekV3Attention(config), mlp)


class NeuronDeepseekV3Model(DecoderModel):
    def __init__(self, config):
        super().__init__(config, NeuronDeepseekV3DecoderLayer)


class NeuronDeepseekV3ForCausalLM(CausalLM):
    model_cls = NeuronDeepseekV3Model

    @staticmethod
    def convert_hf_to_neuron_state_dict(state_dict, config):
        """HF keys -> port keys. Routed experts are stored one by one in HF checkpoints
        (``mlp.experts.{e}.{gate,up,down}_proj.weight``); the port stacks them per layer."""
        converted = stack_checkpoint_experts(
            state_dict,
            config.num_hidden_layers,
            "model.layers.{}.mlp.experts",
            config.n_routed_experts,
            "gate_proj", "up_proj", "down_proj",
        )  # fmt: skip
        return CausalLM.convert_hf_to_neuron_state_dict(converted, config)
