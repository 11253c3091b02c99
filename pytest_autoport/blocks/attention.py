import torch
from torch import nn


class KVCache(nn.Module):
    """A preallocated key/value cache of static shape [batch, kv_heads, max_seq_len, head_dim].

    ``kv_cache_names`` declares both buffers as KV cache to the harness: it zeroes them between runs
    and shares them between the compiled context-encoding and token-generation graphs.
    """

    kv_cache_names = ("k_cache", "v_cache")

    def __init__(self, batch_size: int, kv_heads: int, max_seq_len: int, head_dim: int):
        super().__init__()
        shape = (batch_size, kv_heads, max_seq_len, head_dim)
        self.register_buffer("k_cache", torch.zeros(shape), persistent=False)
        self.register_buffer("v_cache", torch.zeros(shape), persistent=False)

    def update(
        self, k: torch.Tensor, v: torch.Tensor, position_ids: torch.Tensor, cache_len: int | None = None
    ):
        """Write k/v [batch, kv_heads, seq, head_dim] at ``position_ids`` [batch, seq].

        Returns the first ``cache_len`` slots of both caches (all of them when None): the graph of a
        bucket only reads the slots its bucket can reach, as NxDI's bucketed graphs do.
        """
        batch, heads, _, head_dim = k.shape
        index = position_ids[:batch, None, :, None].expand(batch, heads, -1, head_dim)
        self.k_cache[:batch].scatter_(2, index, k.to(self.k_cache.dtype))
        self.v_cache[:batch].scatter_(2, index, v.to(self.v_cache.dtype))
        end = self.k_cache.shape[2] if cache_len is None else cache_len
        return self.k_cache[:batch, :, :end], self.v_cache[:batch, :, :end]


def causal_cache_mask(position_ids: torch.Tensor, cache_len: int, window: int | None = None) -> torch.Tensor:
    """Boolean [batch, 1, seq, cache_len]: a query at position p sees cache slots 0..p,
    or only the last ``window`` of them (p - window < slot <= p) under sliding-window attention."""
    slots = torch.arange(cache_len, device=position_ids.device)[None, None, None, :]
    query = position_ids[:, None, :, None]
    mask = slots <= query
    if window is not None:
        mask = mask & (slots > query - window)
    return mask


def repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """[batch, kv_heads, seq, d] -> [batch, kv_heads * groups, seq, d] for grouped-query attention."""
    if groups == 1:
        return x
    batch, heads, seq, dim = x.shape
    return x[:, :, None].expand(batch, heads, groups, seq, dim).reshape(batch, heads * groups, seq, dim)
