"""Peak memory and wall time of the golden's HF reference, held whole vs streamed one decoder layer at a
time (``--autoport-golden-streaming``), on a random-weight FP32 Llama built here (2.2 GB by default).

Each path runs in its own child process, which reports its peak RSS (VmHWM) and wall time; a third child
that only imports the same modules gives the interpreter's own footprint. The streaming target: peak RSS
<= 1.5 x (largest decoder layer + the parameters outside the layers). The checkpoint lives in a
temporary folder this script creates and removes. Run it alone under ``flock /tmp/bigmem.lock``.

Usage: python -m bench.streaming_golden [--layers 8] [--hidden 2048]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import checkpoints
from bench._runner import REPO, child_env
from bench.memory import peak_rss_bytes

LENGTHS = (16, 24, 32)
TARGET_RATIO = 1.5


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


def run_child(mode: str, folder: Path, out: Path) -> dict:
    command = [sys.executable, "-m", "bench.streaming_golden", "--child", mode, str(folder), str(out)]
    done = subprocess.run(command, cwd=REPO, env=child_env(), capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(layers: int = 8, hidden: int = 2048) -> dict:
    """Build the checkpoint, run the three children, compare their logits; the figures."""
    import torch

    tmp = Path(tempfile.mkdtemp(prefix="autoport-streaming-bench-"))
    try:
        folder = tmp / "llama"
        started = time.perf_counter()
        checkpoints.build(folder, checkpoints.llama_shape(hidden, layers), tokenizer=False)
        figures = {"build_s": round(time.perf_counter() - started, 1), **checkpoints.sizes(folder)}
        runs = {mode: run_child(mode, folder, tmp) for mode in ("imports", "streaming", "whole")}
        whole, streamed = torch.load(tmp / "whole.pt"), torch.load(tmp / "streaming.pt")
    finally:
        shutil.rmtree(tmp)
    budget = figures["largest_layer_bytes"] + figures["non_layer_bytes"]
    base = runs["imports"]["peak_rss_bytes"]
    figures.update(
        layers=layers,
        hidden=hidden,
        sequence_lengths=list(LENGTHS),
        budget_bytes=budget,
        interpreter_rss_bytes=base,
        whole={k: runs["whole"][k] for k in ("seconds", "peak_rss_bytes")},
        streaming={k: runs["streaming"][k] for k in ("seconds", "peak_rss_bytes")},
        streaming_ratio_raw=round(runs["streaming"]["peak_rss_bytes"] / budget, 3),
        streaming_ratio_above_interpreter=round((runs["streaming"]["peak_rss_bytes"] - base) / budget, 3),
        whole_ratio_above_interpreter=round((runs["whole"]["peak_rss_bytes"] - base) / budget, 3),
        max_rel_diff=max(((s - w).abs().max() / w.abs().max()).item() for s, w in zip(streamed, whole)),
    )
    return figures


def table(figures: dict) -> str:
    gb = 1e9
    return "\n".join(
        [
            "| checkpoint GB | largest layer + non-layer GB | whole: s, peak GB | streaming: s, peak GB "
            "| streaming peak / budget (above interpreter) | max rel diff |",
            "|---|---|---|---|---|---|",
            f"| {figures['checkpoint_bytes'] / gb:.2f} | {figures['budget_bytes'] / gb:.2f} | "
            f"{figures['whole']['seconds']}, {figures['whole']['peak_rss_bytes'] / gb:.2f} | "
            f"{figures['streaming']['seconds']}, {figures['streaming']['peak_rss_bytes'] / gb:.2f} | "
            f"{figures['streaming_ratio_raw']} ({figures['streaming_ratio_above_interpreter']}) | "
            f"{figures['max_rel_diff']:.2g} |",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--child", nargs=3, metavar=("MODE", "FOLDER", "OUT"))
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]), Path(args.child[2]))
        return
    figures = measure(args.layers, args.hidden)
    print(json.dumps(figures, indent=2))
    print(table(figures))


if __name__ == "__main__":
    main()
