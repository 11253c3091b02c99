"""Building blocks shared by the ports: norms, rotary embeddings, attention with a static KV cache."""

from .attention import KVCache, causal_cache_mask, repeat_kv
from .norms import RMSNorm
from .rope import RotaryEmbedding, apply_rotary

__all__ = ["KVCache", "RMSNorm", "RotaryEmbedding", "apply_rotary", "causal_cache_mask", "repeat_kv"]
