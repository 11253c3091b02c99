"""What the golden's HF reference costs on a ~300M-parameter random-weight Llama built here: HF
free-running greedy generation (``hf_reference.greedy_golden``, what the default golden runs on a cache
miss) against teacher-forced scoring of the same prompts and continuations: held whole
(``hf_reference.teacher_forced_logits``, one forward per prompt) and streamed one decoder layer at a time
(``StreamingReference.score``, the ``--autoport-golden-streaming`` golden, which never generates; timed
from building its model, so its reads of every layer's weights count). Also HF ``generate``'s decode
tokens/s (the new tokens after the first, over the time after the first token), the figure the port's
``generate`` stage reports for itself.

Everything runs in one child process with the model loaded once. Target: the streamed teacher-forced
golden <= 1/10 of the greedy generation. Run it alone under ``flock /tmp/bigmem.lock``.

Usage: python -m bench.golden_cost [--quick] (builds and removes its checkpoint)
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

PROMPTS = (
    "The lighthouse keeper climbed the spiral stairs",
    "To bake a loaf of bread, mix flour, water,",
    "The days of the week are Monday, Tuesday,",
    "Once upon a time, in a village by the sea,",
    "The river ran past the old mill and",
    "She opened the letter and read the first line",
    "In the morning the market was full of",
    "The train left the station at noon and",
    "A small boat drifted across the quiet lake",
    "He planted the seeds in rows and waited for",
)
TARGET_RATIO = 0.1


def shape(quick: bool) -> dict:
    """~300M parameters (hidden 1024, 20 layers, 16 heads, 8 KV heads); quick: ~45M."""
    if quick:
        return checkpoints.llama_shape(512, 4, kv_heads=4)
    return checkpoints.llama_shape(1024, 20, kv_heads=8)


def settings(quick: bool) -> dict:
    """The prompts and new tokens per prompt (10 x 64; quick: 3 x 16)."""
    return {"prompts": list(PROMPTS[:3] if quick else PROMPTS), "new_tokens": 16 if quick else 64}


def child(folder: Path, prompts: list[str], new_tokens: int) -> dict:
    import torch
    from transformers import AutoTokenizer

    from pytest_autoport.hf_reference import greedy_golden, load_hf_model, teacher_forced_logits
    from pytest_autoport.streaming_reference import StreamingReference

    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = [tokenizer(p)["input_ids"] for p in prompts]
    started = time.perf_counter()
    model = load_hf_model("LlamaForCausalLM", folder, Path("bench"))
    load_s = time.perf_counter() - started

    started = time.perf_counter()
    golden = greedy_golden(model, ids, new_tokens, tokenizer.pad_token_id)
    generate_s = time.perf_counter() - started
    first_token_s = 0.0  # the same generation stopped after one token: prefill + the first token
    for prompt in ids:
        started = time.perf_counter()
        greedy_golden(model, [prompt], 1, tokenizer.pad_token_id)
        first_token_s += time.perf_counter() - started
    started = time.perf_counter()
    forced = teacher_forced_logits(model, ids, golden)
    forced_s = time.perf_counter() - started
    del model

    started = time.perf_counter()
    reference = StreamingReference("LlamaForCausalLM", folder)
    scores = reference.score([p + g for p, g in zip(ids, golden)])
    streamed_s = time.perf_counter() - started
    agree = all(
        torch.equal(s[len(p) - 1 : len(p) - 1 + len(g)].argmax(-1), f.argmax(-1))
        for s, f, p, g in zip(scores, forced, ids, golden)
    )
    decode_steps = sum(len(g) - 1 for g in golden)
    return {
        "threads": torch.get_num_threads(),
        "prompt_tokens": [len(p) for p in ids],
        "new_tokens": [len(g) for g in golden],
        "hf_load_s": round(load_s, 2),
        "hf_generate_s": round(generate_s, 2),
        "hf_first_token_s": round(first_token_s, 2),
        "hf_decode_tokens_per_s": round(decode_steps / max(generate_s - first_token_s, 1e-9), 1),
        "teacher_forced_whole_s": round(forced_s, 2),
        "teacher_forced_streamed_s": round(streamed_s, 2),
        "streamed_argmax_equals_whole": agree,
        "peak_rss_bytes": peak_rss_bytes(),
    }


def measure(folder: Path, prompts: list[str], new_tokens: int) -> dict:
    """The child's figures on the checkpoint in ``folder``, with the ratios to the greedy generation."""
    command = [
        sys.executable,
        "-m",
        "bench.golden_cost",
        "--child",
        str(folder),
        json.dumps(prompts),
        str(new_tokens),
    ]
    done = subprocess.run(command, cwd=REPO, env=child_env(), capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"golden cost child failed:\n{done.stderr[-2000:]}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    figures["streamed_over_generate"] = round(
        figures["teacher_forced_streamed_s"] / figures["hf_generate_s"], 3
    )
    figures["whole_over_generate"] = round(figures["teacher_forced_whole_s"] / figures["hf_generate_s"], 3)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a ~45M model, 3 prompts x 16 tokens")
    parser.add_argument("--child", nargs=3, metavar=("FOLDER", "PROMPTS_JSON", "NEW_TOKENS"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(Path(args.child[0]), json.loads(args.child[1]), int(args.child[2]))))
        return
    tmp = Path(tempfile.mkdtemp(prefix="autoport-golden-cost-"))
    try:
        checkpoints.build(tmp / "llama", shape(args.quick))
        figures = {**checkpoints.sizes(tmp / "llama"), **measure(tmp / "llama", **settings(args.quick))}
    finally:
        shutil.rmtree(tmp)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
