"""The port's decode tokens/s, as its ``generate`` stage measures it (the compiled torch-target port,
token-generation graphs and KV cache, one token per step after the first), on a checkpoint built
elsewhere: a project holding the bundled Llama port and a copy of its spec aimed at that checkpoint runs
``pytest -k "env or compile or generate"`` in a temporary folder.

The suite compares the figure with HF ``generate``'s decode tokens/s on the same checkpoint, prompts and
lengths (``bench.golden_cost``). Target: port >= HF.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from bench._runner import REPO, compile_per_bucket, stage, verdict

SPEC_NAME = "llama_bench"


def write_project(root: Path, weights: Path, prompts: list[str], new_tokens: int) -> None:
    """The bundled Llama port and its spec with ``weights``, ``prompts`` and ``new_tokens``, one context
    bucket of 32 and one token-generation bucket of 128, greedy generation that never stops early and
    no degeneracy gate (random weights repeat themselves)."""
    shutil.copytree(REPO / "neuron_port", root / "neuron_port", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "pytest.ini").write_text("[pytest]\n")
    text = (REPO / "port_specs" / "llama.toml").read_text()
    text = text.split("\n# When weights_path does not exist")[0]  # no [tiny] table: a real checkpoint
    replacements = {
        r'name = "llama"': f'name = "{SPEC_NAME}"',
        r'weights_path = "[^"\n]*"': f"weights_path = {json.dumps(str(weights))}",
        r"max_seq_len = \d+": "max_seq_len = 128",
        r"context_buckets = \[[^\]]*\]": "context_buckets = [32]",
        r"token_generation_buckets = \[[^\]]*\][^\n]*": "token_generation_buckets = [128]",
        r"prompts = \[[^\]]*\]": f"prompts = {json.dumps(prompts)}",
        r"num_tokens_to_check = \d+": f"num_tokens_to_check = {new_tokens}",
    }
    for pattern, value in replacements.items():
        text, count = re.subn(pattern, lambda _m, v=value: v, text, count=1)
        if count != 1:
            raise ValueError(f"port_specs/llama.toml: {pattern!r} not found; update bench/port_decode.py")
    text += "\n[generation]\nstop_at_eos = false\nmax_token_run = 1000\nmax_ngram_repeats = 1000\n"
    (root / "port_specs").mkdir(parents=True)
    (root / "port_specs" / f"{SPEC_NAME}.toml").write_text(text)


def measure(tmp: Path, weights: Path, prompts: list[str], new_tokens: int) -> dict:
    """Figures of ``-k generate`` on the port (``tmp``: an empty folder for the project and artifacts)."""
    project = tmp / "project"
    write_project(project, weights, prompts, new_tokens)
    selection = ("-k", "env or compile or generate")
    seconds, result = verdict(tmp / "artifacts", *selection, spec=SPEC_NAME, cwd=project)
    generate = stage(result, "generate")
    figures = generate["figures"]
    return {
        "status": generate["status"],
        "message": (generate.get("message") or "")[:300],
        "wall_s": round(seconds, 1),
        "compile_s_per_bucket": compile_per_bucket(result),
        "threads": stage(result, "env")["figures"].get("threads"),
        "new_tokens": figures.get("new_tokens"),
        "ttft_s": figures.get("ttft_s"),
        "e2e_s": figures.get("e2e_s"),
        "decode_tokens_per_s": figures.get("decode_tokens_per_s"),
    }
