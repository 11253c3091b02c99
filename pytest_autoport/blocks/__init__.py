"""Building blocks shared by the ports: norms, rotary embeddings, attention with a static KV cache.

Import them as ``pytest_autoport.blocks`` (installed with the harness). ``AUTOPORT_BLOCKS_PATH`` names
folders searched before this one for the block modules, to try an edited block without touching the
installed package (the harness's tests plant bugs in blocks this way)."""

import os

__path__[:0] = [p for p in os.environ.get("AUTOPORT_BLOCKS_PATH", "").split(os.pathsep) if p]

from .attention import KVCache, causal_cache_mask, repeat_kv  # noqa: E402
from .norms import RMSNorm  # noqa: E402
from .rope import RotaryEmbedding, apply_rotary  # noqa: E402

__all__ = ["KVCache", "RMSNorm", "RotaryEmbedding", "apply_rotary", "causal_cache_mask", "repeat_kv"]
