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
import signal
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
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


class Suite:
    """The report being built; written out after every section, so a suite stopped halfway leaves
    what it measured (``complete`` false)."""

    def __init__(self, args: argparse.Namespace, command: str):
        self.args = args
        self.started = time.perf_counter()
        self.report: dict = {
            "command": command,
            "mode": "quick" if args.quick else "full",
            "started_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "complete": False,
            "lock_wait_s": 0.0,
        }
        self.load_before = load_average()

    def section(self, name: str, run) -> None:
        """``report[name] = run()``, or the error it raised (the suite goes on with the next section)."""
        started = time.perf_counter()
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        try:
            self.report[name] = run()
        except Exception as exc:  # noqa: BLE001 - one broken measurement must not lose the others
            traceback.print_exc()
            lines = str(exc).strip().splitlines()
            self.report[name] = {"error": f"{type(exc).__name__}: {lines[-1][:300] if lines else ''}"}
        print(f"[bench] {name}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        self.save()

    @contextmanager
    def bigmem(self):
        """The machine-wide memory lock around a large checkpoint's sections (not in quick mode)."""
        with bigmem_lock(not self.args.quick) as waited:
            self.report["lock_wait_s"] = round(self.report["lock_wait_s"] + waited, 1)
            yield

    def save(self, complete: bool = False) -> tuple[Path, Path]:
        machine = machine_info(child_env())
        machine.update(load_average_before=self.load_before, load_average_after=load_average())
        self.report.update(
            complete=complete, duration_s=round(time.perf_counter() - self.started, 1), machine=machine
        )
        return write(self.report, self.args.out)


def run(suite: Suite, tmp: Path) -> None:
    args = suite.args
    chosen = set(args.only.split(",")) if args.only else set(SECTIONS)
    repeats = 1 if args.quick else 3
    warm = tmp / "verdict"
    if "verdict" in chosen or "compile" in chosen:
        suite.section("verdict", lambda: verdict_timing.measure(warm, repeats=repeats))
    if "xdist" in chosen:
        suite.section("xdist", lambda: xdist_timing.measure(warm))
    if "compile" in chosen:
        compiled = {"export": suite.report["verdict"].get("compile_s_per_bucket", {})}
        if args.aoti:
            suite.section("aoti", lambda: compile_timing.measure(tmp / "aoti", "aoti"))
            compiled["aoti"] = suite.report["aoti"].get("compile_s_per_bucket", {})
        suite.report["compile"] = compiled
    if "streaming" in chosen:
        layers, hidden = (4, 512) if args.quick else (8, 2048)
        with suite.bigmem():
            suite.section("streaming", lambda: streaming_golden.measure(layers, hidden))
    if chosen & {"golden_cost", "port_decode"}:
        with suite.bigmem():
            llama_sections(suite, chosen, tmp / "llama")


def llama_sections(suite: Suite, chosen: set, tmp: Path) -> None:
    """golden_cost and port_decode on one ~300M checkpoint (quick: ~45M), removed afterwards."""
    weights = tmp / "weights"
    quick = suite.args.quick
    given = golden_cost.settings(quick)
    try:
        suite.section("llama_checkpoint", lambda: build_llama(weights, quick))
        if "error" in suite.report["llama_checkpoint"]:
            return
        suite.section("golden_cost", lambda: golden_cost.measure(weights, **given))
        if "port_decode" in chosen:
            suite.section("port_decode", lambda: port_decode.measure(tmp, weights, **given))
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
    command = shlex.join(["python", "-m", "bench", *(argv if argv is not None else sys.argv[1:])])
    suite = Suite(args, command)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stopped: still remove the temporary folder
    with tempfile.TemporaryDirectory(prefix="autoport-bench-") as tmp:
        run(suite, Path(tmp))
    json_path, md_path = suite.save(complete=True)
    print(md_path.read_text())
    print(
        f"written: {json_path.relative_to(REPO) if json_path.is_relative_to(REPO) else json_path}, {md_path.name}"
    )


if __name__ == "__main__":
    main()
