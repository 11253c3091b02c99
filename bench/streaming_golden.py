"""Peak memory and wall time of the golden's HF reference, held whole vs streamed one decoder layer at a
time (``--autoport-golden-streaming``), on a random-weight FP32 Llama of >= 1 GB built here.

Each path runs in its own child process, which reports its peak RSS (VmHWM) and wall time; a third child
that only imports the same modules gives the interpreter's own footprint. Printed: a JSON object and one
markdown table row. The checkpoint lives in a temporary folder this script creates and removes.

Usage: OMP_NUM_THREADS=2 python bench/streaming_golden.py [--layers 8] [--hidden 2048]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LENGTHS = (16, 24, 32)


def peak_rss_bytes() -> int:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) * 1024


def child(mode: str, folder: Path, out: Path) -> None:
    import torch

    from pytest_autoport.hf_reference import load_hf_model
    from pytest_autoport.streaming_reference import StreamingReference

    g = torch.Generator().manual_seed(0)
    sequences = [torch.randint(0, 32000, (n,), generator=g).tolist() for n in LENGTHS]
    start = time.perf_counter()
    logits = None
    if mode == "whole":
        model = load_hf_model("LlamaForCausalLM", folder, Path("bench"))
        with torch.inference_mode():
            logits = [model(torch.tensor([s]), use_cache=False).logits[0].float() for s in sequences]
    elif mode == "streaming":
        logits = StreamingReference("LlamaForCausalLM", folder).score(sequences)
    else:  # the interpreter with the same modules imported, nothing loaded
        import transformers

        transformers.LlamaForCausalLM  # noqa: B018 - import the model module
    seconds = time.perf_counter() - start
    if logits is not None:
        torch.save([t[-4:].clone() for t in logits], out / f"{mode}.pt")  # the last positions, to compare
    print(json.dumps({"mode": mode, "seconds": round(seconds, 2), "peak_rss_bytes": peak_rss_bytes()}))


def build(folder: Path, layers: int, hidden: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=hidden * 11 // 4,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 128,
        num_key_value_heads=hidden // 128,
        vocab_size=32000,
        max_position_embeddings=256,
    )
    LlamaForCausalLM(config).save_pretrained(folder, max_shard_size="1GB")


def sizes(folder: Path) -> dict:
    """Bytes of the largest decoder layer and of everything outside the layers, from the headers."""
    from safetensors import safe_open

    per_layer: dict[int, int] = {}
    outside = 0
    for path in folder.glob("*.safetensors"):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                sl = f.get_slice(key)
                shape = sl.get_shape()
                count = 1
                for d in shape:
                    count *= d
                nbytes = count * 4  # FP32 checkpoint
                match = re.match(r"model\.layers\.(\d+)\.", key)
                if match:
                    per_layer[int(match.group(1))] = per_layer.get(int(match.group(1)), 0) + nbytes
                else:
                    outside += nbytes
    return {
        "checkpoint_bytes": sum(per_layer.values()) + outside,
        "largest_layer_bytes": max(per_layer.values()),
        "non_layer_bytes": outside,
    }


def run_child(mode: str, folder: Path, out: Path) -> dict:
    command = [sys.executable, __file__, "--child", mode, str(folder), str(out)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--child", nargs=3, metavar=("MODE", "FOLDER", "OUT"))
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]), Path(args.child[2]))
        return
    import torch

    tmp = Path(tempfile.mkdtemp(prefix="autoport-streaming-bench-"))
    try:
        folder = tmp / "llama"
        build(folder, args.layers, args.hidden)
        figures = sizes(folder)
        runs = {mode: run_child(mode, folder, tmp) for mode in ("imports", "streaming", "whole")}
        whole, streamed = torch.load(tmp / "whole.pt"), torch.load(tmp / "streaming.pt")
    finally:
        shutil.rmtree(tmp)
    budget = figures["largest_layer_bytes"] + figures["non_layer_bytes"]
    base = runs["imports"]["peak_rss_bytes"]
    figures.update(
        layers=args.layers,
        hidden=args.hidden,
        sequence_lengths=list(LENGTHS),
        interpreter_rss_bytes=base,
        whole={k: runs["whole"][k] for k in ("seconds", "peak_rss_bytes")},
        streaming={k: runs["streaming"][k] for k in ("seconds", "peak_rss_bytes")},
        streaming_ratio_raw=round(runs["streaming"]["peak_rss_bytes"] / budget, 3),
        streaming_ratio_above_interpreter=round((runs["streaming"]["peak_rss_bytes"] - base) / budget, 3),
        whole_ratio_above_interpreter=round((runs["whole"]["peak_rss_bytes"] - base) / budget, 3),
        max_rel_diff=max(((s - w).abs().max() / w.abs().max()).item() for s, w in zip(streamed, whole)),
    )
    print(json.dumps(figures, indent=2))
    gb = 1e9
    print(
        "| checkpoint GB | largest layer + non-layer GB | whole: s, peak GB | streaming: s, peak GB "
        "| streaming peak / budget (above interpreter) | max rel diff |"
    )
    print(
        f"| {figures['checkpoint_bytes'] / gb:.2f} | {budget / gb:.2f} | "
        f"{figures['whole']['seconds']}, {figures['whole']['peak_rss_bytes'] / gb:.2f} | "
        f"{figures['streaming']['seconds']}, {figures['streaming']['peak_rss_bytes'] / gb:.2f} | "
        f"{figures['streaming_ratio_raw']} ({figures['streaming_ratio_above_interpreter']}) | "
        f"{figures['max_rel_diff']:.2g} |"
    )


if __name__ == "__main__":
    main()
