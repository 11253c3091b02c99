"""Seeded random-weight FP32 Llama checkpoints built locally for the benchmarks (never from a hub), and
their sizes read back from the safetensors headers.

Building runs in a child process (``python -m bench.checkpoints FOLDER SHAPE_JSON``) so that the
model's memory is returned to the machine as soon as it is saved."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from bench._runner import REPO, child_env

TOKENIZER_VOCAB = 4096  # a BPE tokenizer trained on the bundled corpus; every id fits a 32000 vocabulary
BASE_SHAPE = {
    "vocab_size": 32000,
    "max_position_embeddings": 256,
    "rope_theta": 500000.0,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
}


def llama_shape(hidden: int, layers: int, kv_heads: int | None = None, **extra) -> dict:
    """A Llama config of head dim 128 (64 below hidden 1024) and SwiGLU width 11/4 of ``hidden``."""
    head_dim = 128 if hidden >= 2048 else 64
    heads = hidden // head_dim
    return {
        **BASE_SHAPE,
        "hidden_size": hidden,
        "intermediate_size": hidden * 11 // 4,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads or heads,
        **extra,
    }


def build(folder: Path, shape: dict, tokenizer: bool = True) -> None:
    """Build the checkpoint in a child process (seed 0, ``save_pretrained``, 1 GB shards)."""
    command = [sys.executable, "-m", "bench.checkpoints", str(folder), json.dumps(shape)]
    if not tokenizer:
        command.append("--no-tokenizer")
    subprocess.run(command, cwd=REPO, env=child_env(), check=True)


def _build_here(folder: Path, shape: dict, tokenizer: bool) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from pytest_autoport.checkpoint import build_tokenizer

    ids = {}
    if tokenizer:
        tok = build_tokenizer(TOKENIZER_VOCAB)
        ids = {
            "pad_token_id": tok.pad_token_id,
            "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id,
        }
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**shape, **ids)).eval()
    model.save_pretrained(folder, max_shard_size="1GB")
    if tokenizer:
        tok.save_pretrained(folder)


def sizes(folder: Path) -> dict:
    """Parameters and bytes of the checkpoint, of its largest decoder layer and of everything outside
    the layers (embeddings, final norm, head), from the safetensors headers."""
    from safetensors import safe_open

    per_layer: dict[int, int] = {}
    outside = 0
    parameters = 0
    for path in folder.glob("*.safetensors"):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                count = 1
                for d in f.get_slice(key).get_shape():
                    count *= d
                parameters += count
                nbytes = count * 4  # FP32 checkpoint
                match = re.match(r"model\.layers\.(\d+)\.", key)
                if match:
                    per_layer[int(match.group(1))] = per_layer.get(int(match.group(1)), 0) + nbytes
                else:
                    outside += nbytes
    return {
        "parameters": parameters,
        "checkpoint_bytes": sum(per_layer.values()) + outside,
        "largest_layer_bytes": max(per_layer.values()),
        "non_layer_bytes": outside,
    }


if __name__ == "__main__":
    _build_here(Path(sys.argv[1]), json.loads(sys.argv[2]), "--no-tokenizer" not in sys.argv[3:])
