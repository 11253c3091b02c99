"""Compile time per bucket for both torch-target compilers, the warm verdict, and the reuse check
(a second run compiles nothing). Usage: python bench/compile_timing.py [spec]"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from _runner import verdict


def compile_figures(result: dict) -> dict:
    return next(s["figures"] for s in result["stages"] if s["id"] == "compile")


def main(spec: str = "llama") -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for compiler in ("export", "aoti"):
            artifacts = Path(tmp) / compiler
            seconds, result = verdict(
                artifacts, "-k", "compile", f"--autoport-compiler={compiler}", spec=spec
            )
            figures = compile_figures(result)
            print(f"[{compiler}] compile stage {seconds:.1f} s wall (compiled: {figures.get('compiled')})")
            for key, value in sorted(figures.items()):
                if key.startswith("compile_s."):
                    print(f"    {key.removeprefix('compile_s.'):<24} {value:8.2f} s")
        artifacts = Path(tmp) / "export"
        warm, result = verdict(artifacts, spec=spec)
        reused = compile_figures(result)
        print(
            f"warm full verdict (no compile): {warm:.1f} s, verdict {'PASSED' if result['passed'] else 'FAILED'}"
        )
        print(f"reuse check: compiles on the second run: {0 if reused['compiled'] is False else 1}")


if __name__ == "__main__":
    main(*sys.argv[1:])
