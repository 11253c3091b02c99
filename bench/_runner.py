"""Child processes of the benchmarks: a staged verdict timed in a subprocess, the import floor, and the
environment every child runs with (one torch thread unless the caller's environment says otherwise)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMPORT_FLOOR = "import torch, transformers; from transformers import LlamaForCausalLM"
DEFAULT_THREADS = "1"


def child_env() -> dict:
    """The caller's environment with the repository first on the path and a thread count set
    (``OMP_NUM_THREADS``/``MKL_NUM_THREADS``, 1 unless already set)."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", DEFAULT_THREADS)
    env.setdefault("MKL_NUM_THREADS", env["OMP_NUM_THREADS"])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def timed(command: list[str], cwd: Path = REPO) -> float:
    """Wall seconds of ``command``; raises with its output's tail when it fails to start or crashes."""
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=child_env(), capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 1):  # 1: pytest's "some tests failed", still a timed verdict
        raise RuntimeError(
            f"{' '.join(command)} exited {done.returncode}:\n{(done.stdout + done.stderr)[-2000:]}"
        )
    return seconds


def import_floor() -> float:
    """Wall seconds of ``python -c "<IMPORT_FLOOR>"``: what any verdict pays before its first stage."""
    return timed([sys.executable, "-c", IMPORT_FLOOR])


def verdict(artifacts: Path, *args: str, spec: str = "llama", cwd: Path = REPO) -> tuple[float, dict]:
    """(wall seconds, results JSON) of ``pytest --autoport-model=spec`` with its own artifact folder;
    a selection (``-k``) reads the partial results written beside the full ones."""
    command = [
        sys.executable,
        "-m",
        "pytest",
        f"--autoport-model={spec}",
        f"--autoport-artifacts={artifacts}",
        "-p",
        "no:cacheprovider",
        "-q",
        *args,
    ]
    results = Path(artifacts) / "results"
    for stale in results.glob(f"{spec}.partial.json"):
        stale.unlink()
    seconds = timed(command, cwd)
    partial = results / f"{spec}.partial.json"
    return seconds, json.loads((partial if partial.is_file() else results / f"{spec}.json").read_text())


def median_of(repeats: int, run) -> tuple[float, list[float]]:
    """(median, every sample) of ``repeats`` calls of ``run()`` returning seconds."""
    samples = [round(run(), 2) for _ in range(repeats)]
    return round(statistics.median(samples), 2), samples


def stage(result: dict, stage_id: str) -> dict:
    """One stage's record from a results JSON (status "absent" when it did not run)."""
    return next((s for s in result["stages"] if s["id"] == stage_id), {"status": "absent", "figures": {}})


def compile_per_bucket(result: dict) -> dict:
    """Seconds per compiled graph (``compile_s.<graph>`` figures of the compile stage)."""
    figures = stage(result, "compile")["figures"]
    return {k.removeprefix("compile_s."): v for k, v in sorted(figures.items()) if k.startswith("compile_s.")}
