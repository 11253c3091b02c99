"""The full verdict of a 1B-shaped Llama (hidden 2048, 16 layers, 32 heads, 8 KV heads, intermediate 8192,
vocab 32000: 1.05B parameters, 4.2 GB FP32 safetensors) with random weights built here: wall time per
stage, peak RSS, disk used by the compiled artifact against the checkpoint's size.

Runs (each a ``pytest --autoport-model=...`` child with its own artifact folder):
  layers2-fp32   --autoport-layers=2
  layers2-bf16   --autoport-layers=2 --autoport-dtype=bfloat16
  full-fp32      the whole model (only with --full)
  full-bf16      the whole model, --autoport-dtype=bfloat16 (only with --full)
  full-fp32-only the whole model, --autoport-dtype=float32: FP32 checks only (only named in --runs)

Memory safety: every child runs in its own session under a watchdog that polls the RSS of the whole
process tree and kills it (SIGKILL to the group) past ``--limit-gb``; a run is refused beforehand when
MemAvailable is below the limit plus ``--headroom-gb``. A killed run is reported with the RSS it reached
and the stage that was running (from ``pytest -v``'s progress lines).

Printed: a JSON object (also written to ``--json``) and a markdown table. The checkpoint and the project
live in a temporary folder this script creates and removes (``--keep`` leaves it).

Usage: OMP_NUM_THREADS=2 python bench/large_model.py [--full] [--runs layers2-fp32,...] [--limit-gb 14]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPEC_NAME = "llama_1b"
SHAPE = {
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 32000,
    "max_position_embeddings": 2048,
    "rope_theta": 500000.0,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
}
TOKENIZER_VOCAB = 4096  # trained on the bundled corpus; every id fits the model's 32000
RUNS = {
    "layers2-fp32": ("--autoport-layers=2",),
    "layers2-bf16": ("--autoport-layers=2", "--autoport-dtype=bfloat16"),
    "full-fp32": (),
    "full-bf16": ("--autoport-dtype=bfloat16",),
    "full-fp32-only": ("--autoport-dtype=float32",),  # FP32 checks only: no bf16 component/model copies
}
GB = 1e9
POLL_S = 0.2
MIN_AVAILABLE = int(1.5 * GB)  # kill the child before the kernel's OOM killer would pick anything


# --- the checkpoint and the project ------------------------------------------------------------------


def build_checkpoint(folder: Path) -> None:
    """Seeded random weights saved with ``save_pretrained``, and a small BPE tokenizer beside them."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from pytest_autoport.checkpoint import build_tokenizer

    tokenizer = build_tokenizer(TOKENIZER_VOCAB)
    torch.manual_seed(0)
    config = LlamaConfig(
        **SHAPE,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(folder, max_shard_size="2GB")
    tokenizer.save_pretrained(folder)


def write_project(root: Path, weights: Path) -> None:
    """A project holding the bundled Llama port and a copy of its spec aimed at the 1B checkpoint, with
    small buckets and a short golden."""
    shutil.copytree(REPO / "neuron_port", root / "neuron_port", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "pytest.ini").write_text("[pytest]\n")
    text = (REPO / "port_specs" / "llama.toml").read_text()
    text = text.split("\n# When weights_path does not exist")[0]  # no [tiny] table: a real checkpoint
    text = re.sub(r'name = "llama"', f'name = "{SPEC_NAME}"', text, count=1)
    text = re.sub(r'weights_path = ".*"', f'weights_path = "{weights}"', text)
    text = re.sub(r"max_seq_len = \d+", "max_seq_len = 64", text)
    text = re.sub(r"context_buckets = \[.*\]", "context_buckets = [16, 32, 64]", text)
    text = re.sub(r"token_generation_buckets = \[.*\]", "token_generation_buckets = [32, 64]", text)
    text = re.sub(
        r"prompts = \[.*?\]",
        'prompts = ["The lighthouse keeper climbed", "To bake bread, mix"]',
        text,
        flags=re.S,
    )
    text = re.sub(r"num_tokens_to_check = \d+", "num_tokens_to_check = 8", text)
    (root / "port_specs").mkdir()
    (root / "port_specs" / f"{SPEC_NAME}.toml").write_text(text + "\n")


def checkpoint_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


# --- a child under the memory watchdog -----------------------------------------------------------------


def mem_available() -> int:
    text = Path("/proc/meminfo").read_text()
    return int(re.search(r"MemAvailable:\s+(\d+) kB", text).group(1)) * 1024


def session_rss(sid: int) -> int:
    """Bytes resident in every process of session ``sid`` (the child and all it started)."""
    total = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[3]) != sid:  # field 6: session id
                continue
            status = (proc / "status").read_text()
        except (OSError, IndexError, ValueError):
            continue
        match = re.search(r"VmRSS:\s+(\d+) kB", status)
        total += int(match.group(1)) * 1024 if match else 0
    return total


def watched(
    command: list[str], cwd: Path, log: Path, limit: int, env: dict, floor: int = MIN_AVAILABLE
) -> dict:
    """Run ``command`` in its own session; kill the session when its RSS passes ``limit`` bytes, or when
    the machine's MemAvailable falls below ``floor`` (others' processes grew meanwhile).
    Returns wall seconds, exit status, peak tree RSS (polled), the single process's peak RSS
    (``wait4``'s ru_maxrss), the peak tree RSS per running stage, and what was running if killed."""
    stages: dict[str, int] = {}
    started: dict[str, float] = {}
    running = "startup"
    peak_tree = 0
    killed = None
    start = time.perf_counter()
    with open(log, "wb") as out:
        child = subprocess.Popen(
            command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    status = rusage = None
    while True:
        pid, status, rusage = os.wait4(child.pid, os.WNOHANG)
        if pid:
            break
        rss = session_rss(child.pid)
        found = re.findall(r"\.toml::(\S+)", log.read_text(errors="replace")[-4000:])
        running = found[-1] if found else running
        started.setdefault(running, round(time.perf_counter() - start, 1))
        peak_tree = max(peak_tree, rss)
        stages[running] = max(stages.get(running, 0), rss)
        available = mem_available()
        if (rss > limit or available < floor) and killed is None:
            killed = {
                "rss_bytes": rss,
                "mem_available_bytes": available,
                "reason": "rss limit" if rss > limit else "MemAvailable floor",
                "stage": running,
                "after_s": round(time.perf_counter() - start, 1),
            }
            os.killpg(child.pid, signal.SIGKILL)
        time.sleep(POLL_S)
    child.returncode = os.waitstatus_to_exitcode(status)
    return {
        "wall_s": round(time.perf_counter() - start, 1),
        "exit_code": child.returncode,
        "peak_tree_rss_bytes": peak_tree,
        "peak_rss_bytes": rusage.ru_maxrss * 1024,
        "peak_tree_rss_by_stage": stages,
        "stage_started_s": started,
        "killed_by_watchdog": killed,
    }


def child_env() -> dict:
    env = dict(os.environ)
    threads = min(int(env.get("OMP_NUM_THREADS", "2") or 2), 2)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def guard(name: str, limit: int, headroom: int) -> str | None:
    """Why the run must not start (MemAvailable below the watchdog limit plus headroom), or None."""
    available = mem_available()
    if available < limit + headroom:
        return (
            f"{name}: refused, MemAvailable {available / GB:.1f} GB < watchdog limit {limit / GB:.1f} GB"
            f" + headroom {headroom / GB:.1f} GB"
        )
    return None


# --- one verdict -----------------------------------------------------------------------------------------


def stage_times(result: dict) -> dict:
    """Seconds per stage kind (the component checks of every layer and dtype summed)."""
    times: dict[str, float] = {}
    for stage in result.get("stages", []):
        kind = stage["stage"]
        times[kind] = round(times.get(kind, 0.0) + stage["duration_s"], 1)
    return times


def run_verdict(name: str, project: Path, tmp: Path, limit: int, ckpt: int) -> dict:
    artifacts = tmp / f"artifacts-{name}"
    command = [
        sys.executable,
        "-m",
        "pytest",
        f"--autoport-model={SPEC_NAME}",
        f"--autoport-artifacts={artifacts}",
        "-p",
        "no:cacheprovider",
        "-v",
        *RUNS[name],
    ]
    log = tmp / f"{name}.log"
    figures = {"run": name, "args": list(RUNS[name]), "limit_bytes": limit}
    figures.update(watched(command, project, log, limit, child_env()))
    results = artifacts / "results" / f"{SPEC_NAME}.json"
    if results.is_file():
        result = json.loads(results.read_text())
        figures["verdict"] = result["verdict"]
        figures["stage_s"] = stage_times(result)
        figures["failed"] = [
            f"{s['id']}: {s['message'][:200]}" for s in result["stages"] if s["status"] in ("failed", "error")
        ]
        compiled = next((s["figures"] for s in result["stages"] if s["id"] == "compile"), {})
        figures["artifact_bytes"] = compiled.get("artifact_bytes")
        figures["weights_bytes"] = compiled.get("weights_bytes")
    else:
        figures["verdict"] = "killed" if figures["killed_by_watchdog"] else "no results"
        figures["log_tail"] = log.read_text(errors="replace")[-1500:]
        figures["stage_s"] = watched_stage_times(figures)
        figures.update(sealed_artifact_bytes(artifacts))
    if figures.get("artifact_bytes"):
        figures["artifact_ratio"] = round(figures["artifact_bytes"] / ckpt, 3)
    figures["peak_rss_ratio"] = round(
        max(figures["peak_rss_bytes"], figures["peak_tree_rss_bytes"]) / ckpt, 3
    )
    return figures


def watched_stage_times(figures: dict) -> dict:
    """Seconds per stage kind from when the watchdog saw each stage start (a killed verdict writes no
    results); the stage running when it was killed counts up to the kill."""
    starts = sorted(figures["stage_started_s"].items(), key=lambda kv: kv[1])
    ends = [t for _, t in starts[1:]] + [figures["wall_s"]]
    times: dict[str, float] = {}
    for (stage, begun), end in zip(starts, ends):
        kind = stage.split("[")[0]
        if kind != "startup":
            times[kind] = round(times.get(kind, 0.0) + end - begun, 1)
    return times


def sealed_artifact_bytes(artifacts: Path) -> dict:
    """Bytes of a compiled artifact sealed (manifest written) before the verdict was killed."""
    for manifest in (artifacts / "data" / "compiled_model").glob("*/manifest.json"):
        files = [f for f in manifest.parent.rglob("*") if f.is_file()]
        store = manifest.parent / "weights.safetensors"
        return {
            "artifact_bytes": sum(f.stat().st_size for f in files),
            "weights_bytes": store.stat().st_size if store.is_file() else None,
        }
    return {}


def table(runs: list[dict], ckpt: int) -> str:
    kinds = []
    for run in runs:
        kinds += [k for k in run.get("stage_s", {}) if k not in kinds]
    head = [
        "run",
        "verdict",
        "wall s",
        *(f"{k} s" for k in kinds),
        "peak RSS GB (x ckpt)",
        "artifact GB (x ckpt)",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run in runs:
        peak = max(run["peak_rss_bytes"], run["peak_tree_rss_bytes"])
        art = run.get("artifact_bytes")
        verdict = run["verdict"]
        if run["killed_by_watchdog"]:
            k = run["killed_by_watchdog"]
            verdict = f"killed at {k['rss_bytes'] / GB:.1f} GB in {k['stage']}"
        cells = [
            run["run"],
            verdict,
            f"{run['wall_s']:.0f}",
            *(str(run.get("stage_s", {}).get(k, "")) for k in kinds),
            f"{peak / GB:.2f} ({peak / ckpt:.2f})",
            f"{art / GB:.2f} ({art / ckpt:.2f})" if art else "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--full", action="store_true", help="also the whole model, FP32 and bf16")
    parser.add_argument("--runs", help=f"comma-separated subset of {', '.join(RUNS)}")
    parser.add_argument("--limit-gb", type=float, default=14.0, help="watchdog: kill a child past this RSS")
    parser.add_argument(
        "--headroom-gb", type=float, default=4.0, help="refuse a run unless MemAvailable >= limit + this"
    )
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "large_model.json")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (checkpoint, logs)")
    parser.add_argument("--workdir", type=Path, help="parent of the temporary folder (default: TMPDIR)")
    parser.add_argument("--build", type=Path, help=argparse.SUPPRESS)  # child: build the checkpoint here
    args = parser.parse_args()
    if args.build:
        build_checkpoint(args.build)
        return
    names = args.runs.split(",") if args.runs else [*RUNS][: 4 if args.full else 2]
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        parser.error(f"unknown run(s) {unknown}; choose from {list(RUNS)}")
    limit, headroom = int(args.limit_gb * GB), int(args.headroom_gb * GB)
    refused = guard("checkpoint build", limit, headroom)
    if refused:
        sys.exit(refused)

    tmp = Path(tempfile.mkdtemp(prefix="autoport-large-bench-", dir=args.workdir))
    runs: list[dict] = []
    try:
        weights = tmp / "llama-1b"
        built = watched(
            [sys.executable, __file__, "--build", str(weights)], REPO, tmp / "build.log", limit, child_env()
        )
        if built["exit_code"] != 0:
            sys.exit(f"checkpoint build failed ({built}):\n{(tmp / 'build.log').read_text()[-2000:]}")
        ckpt = checkpoint_bytes(weights)
        write_project(tmp / "project", weights)
        print(
            f"checkpoint {ckpt / GB:.2f} GB built in {built['wall_s']} s "
            f"(peak {built['peak_rss_bytes'] / GB:.2f} GB)",
            flush=True,
        )
        for name in names:
            refused = guard(name, limit, headroom)
            if refused:
                print(refused, flush=True)
                runs.append({"run": name, "refused": refused})
                continue
            runs.append(run_verdict(name, tmp / "project", tmp, limit, ckpt))
            print(json.dumps(runs[-1]), flush=True)
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    import platform

    import torch
    import transformers

    report = {
        "shape": SHAPE,
        "checkpoint_bytes": ckpt,
        "checkpoint_build": {k: built[k] for k in ("wall_s", "peak_rss_bytes")},
        "machine": {
            "cpus": os.cpu_count(),
            "mem_total_bytes": _mem_total(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "omp_num_threads": child_env()["OMP_NUM_THREADS"],
        },
        "runs": runs,
    }
    runs = merged_runs(args.json, runs, ckpt)
    report["runs"] = runs
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(table([r for r in runs if "refused" not in r], ckpt))


def merged_runs(path: Path, runs: list[dict], ckpt: int) -> list[dict]:
    """The runs recorded earlier in ``path`` for the same checkpoint size, updated by this invocation's."""
    try:
        earlier = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return runs
    if earlier.get("checkpoint_bytes") != ckpt:
        return runs
    fresh = {r["run"] for r in runs}
    kept = [r for r in earlier.get("runs", []) if r["run"] not in fresh]
    return sorted(kept + runs, key=lambda r: [*RUNS].index(r["run"]))


def _mem_total() -> int:
    return int(re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text()).group(1)) * 1024


if __name__ == "__main__":
    main()
