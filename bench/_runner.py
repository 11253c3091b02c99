"""Run a staged verdict in a subprocess and time it (shared by the bench scripts)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def verdict(artifacts: Path, *args: str, spec: str = "llama") -> tuple[float, dict]:
    """(wall seconds, results JSON) of ``pytest --autoport-model=spec`` with its own artifact folder."""
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
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    seconds = time.perf_counter() - start
    return seconds, json.loads((artifacts / "results" / f"{spec}.json").read_text())
