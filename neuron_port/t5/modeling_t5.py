"""T5 family port for the portable torch target: an encoder-decoder with relative position buckets,
the scale-only T5 LayerNorm, a ReLU or gated-GELU feed-forward and cross-attention.

Static shapes. ``encode(input_ids, attention_mask)`` runs the bidirectional encoder over one context
bucket. ``forward(decoder_input_ids, position_ids, encoder_hidden, encoder_mask, cache_len)`` runs the
decoder: its self-attention writes keys and values into a preallocated cache at ``position_ids``; on
the context-encoding call (``encoder_hidden`` given) every cross-attention projects the encoder output
into its own cache once, and token-generation calls (``encoder_hidden=None``) read it from there.
"""

import math

import torch
from torch import nn
from transformers.activations import ACT2FN

from pytest_autoport.blocks import KVCache, RMSNorm, causal_cache_mask


def relative_position_bucket(relative_position, bidirectional, num_buckets, max_distance):
    """Bucket of ``key position - query position``: exact buckets for short distances, logarithmic
    ones up to ``max_distance``; a unidirectional (decoder) bias only distinguishes the past."""
    bucket = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        bucket = bucket + (relative_position > 0).long() * num_buckets
        distance = relative_position.abs()
    else:
        distance = (-relative_position).clamp(min=0)
    max_exact = num_buckets // 2
    log_ratio = torch.log(distance.clamp(min=1).float() / max_exact) / math.log(max_distance / max_exact)
    far = (max_exact + (log_ratio * (num_buckets - max_exact)).long()).clamp(max=num_buckets - 1)
    return bucket + torch.where(distance < max_exact, distance, far)


class NeuronT5DenseActDense(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.wi = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.wo = nn.Linear(config.d_ff, config.d_model, bias=False)
        self.act = ACT2FN[config.dense_act_fn]

    def forward(self, x):
        return self.wo(self.act(self.wi(x)))


class NeuronT5DenseGatedActDense(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.wi_0 = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.wi_1 = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.wo = nn.Linear(config.d_ff, config.d_model, bias=False)
        self.act = ACT2FN[config.dense_act_fn]

    def forward(self, x):
        return self.wo(self.act(self.wi_0(x)) * self.wi_1(x))


class NeuronT5LayerFF(nn.Module):
    def __init__(self, config):
        super().__init__()
        mlp = NeuronT5DenseGatedActDense if config.is_gated_act else NeuronT5DenseActDense
        self.DenseReluDense = mlp(config)
        self.layer_norm = RMSNorm(config.d_model, config.layer_norm_epsilon)

    def forward(self, hidden_states):
        return hidden_states + self.DenseReluDense(self.layer_norm(hidden_states))


def attend(q, keys, values, bias, mask):
    """Unscaled dot-product attention (T5 folds the scale into its weights); softmax in the input
    dtype, as the reference does."""
    scores = q @ keys.transpose(-1, -2)
    if bias is not None:
        scores = scores + bias
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1)
    batch, _, seq, _ = q.shape
    return (probs @ values).transpose(1, 2).reshape(batch, seq, -1)


class NeuronT5Attention(nn.Module):
    """Self-attention. The encoder's is bidirectional and uncached; the decoder's is causal over its
    KV cache. Only the first layer of a stack owns ``relative_attention_bias``; the others share it."""

    def __init__(self, config, is_decoder, shared_bias=None):
        super().__init__()
        self.is_decoder = is_decoder
        self.num_heads = config.num_heads
        self.head_dim = config.d_kv
        self.num_buckets = config.relative_attention_num_buckets
        self.max_distance = config.relative_attention_max_distance
        inner = self.num_heads * self.head_dim
        self.q = nn.Linear(config.d_model, inner, bias=False)
        self.k = nn.Linear(config.d_model, inner, bias=False)
        self.v = nn.Linear(config.d_model, inner, bias=False)
        self.o = nn.Linear(inner, config.d_model, bias=False)
        if shared_bias is None:
            self.relative_attention_bias = nn.Embedding(self.num_buckets, self.num_heads)
            shared_bias = self.relative_attention_bias
        self._bias_table = (shared_bias,)  # a reference, not a submodule: its weight has one key
        if is_decoder:
            nc = config.neuron_config
            self.cache = KVCache(nc.batch_size, self.num_heads, nc.max_seq_len, self.head_dim)

    def position_bias(self, query_positions, key_positions):
        """[batch, heads, queries, keys] from query positions [batch, q] and key positions [batch, k]."""
        relative = key_positions[:, None, :] - query_positions[:, :, None]
        buckets = relative_position_bucket(relative, not self.is_decoder, self.num_buckets, self.max_distance)
        return self._bias_table[0](buckets).permute(0, 3, 1, 2)

    def forward(self, hidden_states, position_ids, attention_mask=None, cache_len=None):
        batch, seq, _ = hidden_states.shape
        q = self.q(hidden_states).view(batch, seq, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k(hidden_states).view(batch, seq, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.v(hidden_states).view(batch, seq, self.num_heads, self.head_dim).transpose(1, 2)
        if self.is_decoder:
            keys, values = self.cache.update(k, v, position_ids, cache_len)
            slots = torch.arange(keys.shape[2], device=position_ids.device).expand(batch, -1)
            bias = self.position_bias(position_ids, slots)
            mask = causal_cache_mask(position_ids, keys.shape[2])
        else:
            keys, values = k, v
            bias = self.position_bias(position_ids, position_ids)
            mask = None if attention_mask is None else attention_mask[:, None, None, :].bool()
        return self.o(attend(q, keys, values, bias.to(q.dtype), mask))


class NeuronT5CrossAttention(nn.Module):
    """Attention over the encoder output. Keys and values are projected once, on the context-encoding
    call, into a cache of ``max_seq_len`` source slots; token generation reads them back."""

    def __init__(self, config):
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.d_kv
        inner = self.num_heads * self.head_dim
        self.q = nn.Linear(config.d_model, inner, bias=False)
        self.k = nn.Linear(config.d_model, inner, bias=False)
        self.v = nn.Linear(config.d_model, inner, bias=False)
        self.o = nn.Linear(inner, config.d_model, bias=False)
        nc = config.neuron_config
        self.cache = KVCache(nc.batch_size, self.num_heads, nc.max_seq_len, self.head_dim)

    def forward(self, hidden_states, encoder_hidden=None, encoder_mask=None):
        batch, seq, _ = hidden_states.shape
        q = self.q(hidden_states).view(batch, seq, self.num_heads, self.head_dim).transpose(1, 2)
        if encoder_hidden is not None:
            source = encoder_hidden.shape[1]
            k = self.k(encoder_hidden).view(batch, source, self.num_heads, self.head_dim).transpose(1, 2)
            v = self.v(encoder_hidden).view(batch, source, self.num_heads, self.head_dim).transpose(1, 2)
            slots = torch.arange(source, device=hidden_states.device).expand(batch, -1)
            keys, values = self.cache.update(k, v, slots, source)
        else:
            keys, values = self.cache.k_cache[:batch], self.cache.v_cache[:batch]
        mask = None if encoder_mask is None else encoder_mask[:, None, None, : keys.shape[2]].bool()
        return self.o(attend(q, keys.to(q.dtype), values.to(q.dtype), None, mask))


class NeuronT5LayerSelfAttention(nn.Module):
    def __init__(self, config, is_decoder, shared_bias=None):
        super().__init__()
        self.SelfAttention = NeuronT5Attention(config, is_decoder, shared_bias)
        self.layer_norm = RMSNorm(config.d_model, config.layer_norm_epsilon)

    def forward(self, hidden_states, position_ids, attention_mask=None, cache_len=None):
        normed = self.layer_norm(hidden_states)
        return hidden_states + self.SelfAttention(normed, position_ids, attention_mask, cache_len)


class NeuronT5LayerCrossAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.EncDecAttention = NeuronT5CrossAttention(config)
        self.layer_norm = RMSNorm(config.d_model, config.layer_norm_epsilon)

    def forward(self, hidden_states, encoder_hidden=None, encoder_mask=None):
        return hidden_states + self.EncDecAttention(
            self.layer_norm(hidden_states), encoder_hidden, encoder_mask
        )


class NeuronT5EncoderBlock(nn.Module):
    def __init__(self, config, shared_bias=None):
        super().__init__()
        self.layer = nn.ModuleList(
            [
                NeuronT5LayerSelfAttention(config, is_decoder=False, shared_bias=shared_bias),
                NeuronT5LayerFF(config),
            ]
        )

    def forward(self, hidden_states, position_ids, attention_mask=None):
        return self.layer[1](self.layer[0](hidden_states, position_ids, attention_mask))


class NeuronT5DecoderBlock(nn.Module):
    def __init__(self, config, shared_bias=None):
        super().__init__()
        self.layer = nn.ModuleList(
            [
                NeuronT5LayerSelfAttention(config, is_decoder=True, shared_bias=shared_bias),
                NeuronT5LayerCrossAttention(config),
                NeuronT5LayerFF(config),
            ]
        )

    def forward(self, hidden_states, position_ids, encoder_hidden=None, encoder_mask=None, cache_len=None):
        hidden_states = self.layer[0](hidden_states, position_ids, cache_len=cache_len)
        hidden_states = self.layer[1](hidden_states, encoder_hidden, encoder_mask)
        return self.layer[2](hidden_states)


class NeuronT5Encoder(nn.Module):
    def __init__(self, config, embed_tokens):
        super().__init__()
        self._embed_tokens = (embed_tokens,)  # the model's ``shared`` embedding
        first = NeuronT5EncoderBlock(config)
        table = first.layer[0].SelfAttention.relative_attention_bias
        rest = [NeuronT5EncoderBlock(config, table) for _ in range(config.num_layers - 1)]
        self.block = nn.ModuleList([first, *rest])
        self.final_layer_norm = RMSNorm(config.d_model, config.layer_norm_epsilon)

    def forward(self, input_ids, attention_mask=None):
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        hidden_states = self._embed_tokens[0](input_ids)
        for block in self.block:
            hidden_states = block(hidden_states, positions, attention_mask)
        return self.final_layer_norm(hidden_states)


class NeuronT5Decoder(nn.Module):
    kv_cache_names = ("encoder_mask_cache",)  # the attention caches declare themselves (KVCache)

    def __init__(self, config, embed_tokens):
        super().__init__()
        self._embed_tokens = (embed_tokens,)
        first = NeuronT5DecoderBlock(config)
        table = first.layer[0].SelfAttention.relative_attention_bias
        rest = [NeuronT5DecoderBlock(config, table) for _ in range(config.num_decoder_layers - 1)]
        self.block = nn.ModuleList([first, *rest])
        self.final_layer_norm = RMSNorm(config.d_model, config.layer_norm_epsilon)
        nc = config.neuron_config
        # which cross-attention cache slots hold real source tokens, written with the cross cache
        self.register_buffer(
            "encoder_mask_cache",
            torch.zeros(nc.batch_size, nc.max_seq_len, dtype=torch.bool),
            persistent=False,
        )

    def forward(self, input_ids, position_ids, encoder_hidden=None, encoder_mask=None, cache_len=None):
        batch = input_ids.shape[0]
        if encoder_hidden is not None:
            source = encoder_hidden.shape[1]
            if encoder_mask is None:
                encoder_mask = torch.ones(batch, source, dtype=torch.bool, device=input_ids.device)
            self.encoder_mask_cache[:batch].zero_()
            self.encoder_mask_cache[:batch, :source] = encoder_mask.bool()
        else:
            encoder_mask = self.encoder_mask_cache[:batch]
        hidden_states = self._embed_tokens[0](input_ids)
        for block in self.block:
            hidden_states = block(hidden_states, position_ids, encoder_hidden, encoder_mask, cache_len)
        return self.final_layer_norm(hidden_states)


class NeuronT5ForConditionalGeneration(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.shared = nn.Embedding(config.vocab_size, config.d_model)
        self.encoder = NeuronT5Encoder(config, self.shared)
        self.decoder = NeuronT5Decoder(config, self.shared)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        # T5 v1.0 (tied head) scales the decoder output by d_model**-0.5; v1.1 (untied) does not
        scale = getattr(config, "scale_decoder_outputs", getattr(config, "tie_word_embeddings", True))
        self.output_scale = config.d_model**-0.5 if scale else 1.0

    def encode(self, input_ids, attention_mask=None):
        return self.encoder(input_ids, attention_mask)

    def forward(
        self, decoder_input_ids, position_ids, encoder_hidden=None, encoder_mask=None, cache_len=None
    ):
        hidden_states = self.decoder(decoder_input_ids, position_ids, encoder_hidden, encoder_mask, cache_len)
        return self.lm_head(hidden_states * self.output_scale).float()

    @staticmethod
    def convert_hf_to_neuron_state_dict(state_dict, config):
        """HF keys -> port keys. The stacks read the ``shared`` embedding; the head is tied to it
        unless the checkpoint stores its own."""
        converted = {k: v for k, v in state_dict.items() if not k.endswith("embed_tokens.weight")}
        if "shared.weight" not in converted:
            converted["shared.weight"] = state_dict["encoder.embed_tokens.weight"]
        if "lm_head.weight" not in converted:
            converted["lm_head.weight"] = state_dict["shared.weight"]
        return converted
