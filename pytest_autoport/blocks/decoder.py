"""The skeleton every decoder-only port shares: the SwiGLU MLP, cached grouped-query attention,
the embed -> layers -> norm body and the causal-LM head with its weight conversion."""

import torch
import torch.nn.functional as F
from torch import nn

from .attention import causal_cache_mask, repeat_kv
from .norms import RMSNorm


class SwiGLUMLP(nn.Module):
    """down(act(gate(x)) * up(x)), the MLP of Llama, Mistral, Qwen and most of their descendants."""

    def __init__(self, hidden_size: int, intermediate_size: int, act=F.silu, bias: bool = False):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=bias)
        self.act = act

    def forward(self, x):
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


def attend(
    q, keys, values, position_ids, *, scale: float, window: int | None = None, softcap: float | None = None
):
    """Causal grouped-query attention of queries q [b, heads, s, d] over cache slots
    keys/values [b, kv_heads, slots, d]; the softmax runs in float32 as in the HF reference.
    Returns [b, s, heads * d]."""
    groups = q.shape[1] // keys.shape[1]
    keys, values = repeat_kv(keys, groups), repeat_kv(values, groups)
    scores = (q @ keys.transpose(-1, -2)) * scale
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    mask = causal_cache_mask(position_ids, keys.shape[2], window)
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    batch, _, seq, _ = q.shape
    return (probs @ values).transpose(1, 2).reshape(batch, seq, -1)


class DecoderLayer(nn.Module):
    """The pre-norm residual block: ``x + self_attn(input_layernorm(x))``, then the same around ``mlp``
    with ``post_attention_layernorm``. Families with their own norm set ``norm_cls``."""

    norm_cls: type = RMSNorm

    def __init__(self, config, self_attn: nn.Module, mlp: nn.Module):
        super().__init__()
        self.input_layernorm = self.norm_cls(config.hidden_size, config.rms_norm_eps)
        self.self_attn = self_attn
        self.post_attention_layernorm = self.norm_cls(config.hidden_size, config.rms_norm_eps)
        self.mlp = mlp

    def forward(self, hidden_states, position_ids, cache_len=None):
        hidden_states = hidden_states + self.self_attn(
            self.input_layernorm(hidden_states), position_ids, cache_len
        )
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class DecoderModel(nn.Module):
    """embed_tokens -> layers -> norm, with the HF module names so component paths match.
    Families with their own embedding or final norm set ``embedding_cls`` / ``norm_cls``."""

    embedding_cls: type = nn.Embedding
    norm_cls: type = RMSNorm

    def __init__(self, config, make_layer):
        super().__init__()
        self.embed_tokens = self.embedding_cls(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(make_layer(config, i) for i in range(config.num_hidden_layers))
        self.norm = self.norm_cls(config.hidden_size, config.rms_norm_eps)

    def forward(self, input_ids, position_ids, cache_len=None):
        hidden_states = self.embed_tokens(input_ids)
        for layer in self.layers:
            hidden_states = layer(hidden_states, position_ids, cache_len)
        return self.norm(hidden_states)


class CausalLM(nn.Module):
    """``model`` + ``lm_head``: logits in float32 for every position. Subclasses set ``model_cls``."""

    model_cls: type = DecoderModel

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.model = self.model_cls(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def forward(self, input_ids, position_ids, cache_len=None):
        return self.lm_head(self.model(input_ids, position_ids, cache_len)).float()

    @staticmethod
    def convert_hf_to_neuron_state_dict(state_dict, config):
        """HF keys -> port keys where the layouts coincide: every tensor by its own name, and the
        LM head from the embedding when the checkpoint ties them."""
        converted = {key: state_dict[key] for key in list(state_dict.keys())}
        if "lm_head.weight" not in converted:
            converted["lm_head.weight"] = state_dict["model.embed_tokens.weight"]
        return converted
