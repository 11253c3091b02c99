"""Compile time per bucket for the torch-target compilers (``torch.export``; AOTInductor, slow, on
request) and the reuse check (a second run compiles nothing).

Usage: python -m bench.compile_timing [--spec llama] [--compilers export,aoti]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from bench._runner import compile_per_bucket, stage, verdict


def measure(artifacts: Path, compiler: str, spec: str = "llama") -> dict:
    """``-k compile`` twice in ``artifacts`` with ``compiler``: seconds per graph, and whether the second
    run compiled again."""
    args = ("-k", "compile", f"--autoport-compiler={compiler}")
    seconds, result = verdict(artifacts, *args, spec=spec)
    _, again = verdict(artifacts, *args, spec=spec)
    figures = stage(result, "compile")["figures"]
    return {
        "compiler": compiler,
        "stage_wall_s": round(seconds, 2),
        "compiled": figures.get("compiled"),
        "graphs": figures.get("graphs"),
        "compile_s_per_bucket": compile_per_bucket(result),
        "recompiled_on_second_run": stage(again, "compile")["figures"].get("compiled") is not False,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spec", default="llama")
    parser.add_argument("--compilers", default="export,aoti")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for compiler in args.compilers.split(","):
            print(json.dumps(measure(Path(tmp) / compiler, compiler, args.spec), indent=2))


if __name__ == "__main__":
    main()
