"""Speed-up of ``-n 2`` (pytest-xdist) over ``-n 0`` on the component items of a warm verdict.

Usage: python -m bench.xdist_timing [--spec llama] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from bench._runner import median_of, verdict

SELECTION = ("-k", "component")


def measure(artifacts: Path, spec: str = "llama", repeats: int = 1) -> dict:
    """Warm ``-k component`` wall times, serial and on two workers; ``artifacts`` is warmed first when
    it holds no results yet."""
    if not (artifacts / "results").is_dir():
        verdict(artifacts, *SELECTION, spec=spec)
    serial, serial_samples = median_of(
        repeats, lambda: verdict(artifacts, *SELECTION, "-n", "0", spec=spec)[0]
    )
    two, two_samples = median_of(repeats, lambda: verdict(artifacts, *SELECTION, "-n", "2", spec=spec)[0])
    return {
        "selection": " ".join(SELECTION),
        "n0_s": serial,
        "n2_s": two,
        "n0_samples_s": serial_samples,
        "n2_samples_s": two_samples,
        "speedup": round(serial / two, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spec", default="llama")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(measure(Path(tmp) / "agent_artifacts", args.spec, args.repeats), indent=2))


if __name__ == "__main__":
    main()
