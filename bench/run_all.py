"""The whole benchmark suite in one command: every measurement of issue 15 item 5, each in its own child
processes (one torch thread unless OMP_NUM_THREADS says otherwise), then ``bench/results/suite.json``
(figures and the machine) and ``bench/results/suite.md`` (the table, each figure with its target).

  verdict      import floor, cold / warm full verdict, warm ``-k mlp``, warm golden's HF time (tiny Llama)
  xdist        ``-k component`` warm, ``-n 2`` against ``-n 0``
  compile      seconds per bucket (torch.export, from the cold verdict; AOTInductor with --aoti)
  streaming    golden reference held whole vs streamed: wall and peak RSS (2.2 GB random Llama)
  golden_cost  cold teacher-forced golden vs HF greedy generation (~300M random Llama, 10 x 64 tokens)
  port_decode  the compiled port's decode tokens/s vs HF ``generate``'s on that same ~300M Llama

The memory-hungry parts (streaming, golden_cost, port_decode) take ``/tmp/bigmem.lock`` themselves: do
not start the suite under ``flock`` on that file. ``--quick``: small checkpoints, one repeat, a few
minutes; ``--only``: a subset of the sections (port_decode brings golden_cost, its HF side, along).

Usage: python -m bench [--quick] [--aoti] [--only verdict,xdist,...] [--out bench/results]
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

from bench import (
    checkpoints,
    compile_timing,
    golden_cost,
    port_decode,
    streaming_golden,
    verdict_timing,
    xdist_timing,
)
from bench._runner import REPO, child_env
from bench.machine import load_average, machine_info
from bench.memory import bigmem_lock
from bench.suite_table import write

SECTIONS = ("verdict", "xdist", "compile", "streaming", "golden_cost", "port_decode")


def section(report: dict, name: str, run) -> None:
    """``report[name] = run()``, or the error it raised (the suite goes on with the next section)."""
    started = time.perf_counter()
    print(f"[bench] {name} ...", file=sys.stderr, flush=True)
    try:
        report[name] = run()
    except Exception as exc:  # noqa: BLE001 - one broken measurement must not lose the others
        traceback.print_exc()
        report[name] = {
            "error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else ''}"
        }
    print(f"[bench] {name}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)


def run(args: argparse.Namespace, tmp: Path) -> dict:
    chosen = set(args.only.split(",")) if args.only else set(SECTIONS)
    repeats = 1 if args.quick else 3
    report: dict = {}
    warm = tmp / "verdict"
    if "verdict" in chosen or "compile" in chosen:
        section(report, "verdict", lambda: verdict_timing.measure(warm, repeats=repeats))
    if "xdist" in chosen:
        section(report, "xdist", lambda: xdist_timing.measure(warm))
    if "compile" in chosen:
        compiled = {"export": report["verdict"].get("compile_s_per_bucket", {})}
        if args.aoti:
            section(report, "aoti", lambda: compile_timing.measure(tmp / "aoti", "aoti"))
            compiled["aoti"] = report["aoti"].get("compile_s_per_bucket", {})
        report["compile"] = compiled
    big = not args.quick
    if "streaming" in chosen:
        layers, hidden = (4, 512) if args.quick else (8, 2048)
        with bigmem_lock(big):
            section(report, "streaming", lambda: streaming_golden.measure(layers, hidden))
    if chosen & {"golden_cost", "port_decode"}:
        with bigmem_lock(big):
            llama_sections(report, chosen, tmp / "llama", args.quick)
    return report


def llama_sections(report: dict, chosen: set, tmp: Path, quick: bool) -> None:
    """golden_cost and port_decode on one ~300M checkpoint (quick: ~45M), removed afterwards."""
    weights = tmp / "weights"
    given = golden_cost.settings(quick)
    try:
        section(report, "llama_checkpoint", lambda: build_llama(weights, quick))
        if "error" in report["llama_checkpoint"]:
            return
        section(report, "golden_cost", lambda: golden_cost.measure(weights, **given))
        if "port_decode" in chosen:
            section(report, "port_decode", lambda: port_decode.measure(tmp, weights, **given))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build_llama(folder: Path, quick: bool) -> dict:
    started = time.perf_counter()
    shape = golden_cost.shape(quick)
    checkpoints.build(folder, shape)
    return {"shape": shape, "build_s": round(time.perf_counter() - started, 1), **checkpoints.sizes(folder)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small checkpoints, one repeat (a few minutes)")
    parser.add_argument("--aoti", action="store_true", help="also time AOTInductor compiles (slow)")
    parser.add_argument("--only", help=f"comma-separated subset of {', '.join(SECTIONS)}")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)
    unknown = set(args.only.split(",")) - set(SECTIONS) if args.only else set()
    if unknown:
        parser.error(f"unknown section(s) {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    started_at = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    before = load_average()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="autoport-bench-") as tmp:
        report = run(args, Path(tmp))
    machine = machine_info(child_env())
    machine.update(load_average_before=before, load_average_after=load_average())
    report = {
        "command": shlex.join(["python", "-m", "bench", *(argv if argv is not None else sys.argv[1:])]),
        "mode": "quick" if args.quick else "full",
        "started_at": started_at,
        "duration_s": round(time.perf_counter() - started, 1),
        "machine": machine,
        **report,
    }
    json_path, md_path = write(report, args.out)
    print(md_path.read_text())
    print(
        f"written: {json_path.relative_to(REPO) if json_path.is_relative_to(REPO) else json_path}, {md_path.name}"
    )


if __name__ == "__main__":
    main()
