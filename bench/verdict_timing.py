"""Wall time of the bundled Llama verdict: cold (tiny checkpoint trained, graphs compiled), warm
(everything cached), and the `-k mlp` inner loop. Usage: python bench/verdict_timing.py [spec]"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from _runner import REPO, verdict


def main(spec: str = "llama") -> None:
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = Path(tmp) / "agent_artifacts"
        weights = REPO / "agent_artifacts" / "data" / spec
        if weights.exists():
            print(f"note: {weights} exists, so the cold run reuses that tiny checkpoint")
        cold, result = verdict(artifacts, spec=spec)
        warm, _ = verdict(artifacts, spec=spec)
        mlp, _ = verdict(artifacts, "-k", "mlp", spec=spec)
    print(
        f"spec {spec}: verdict {'PASSED' if result['passed'] else 'FAILED'}, {len(result['stages'])} stages"
    )
    print(f"full verdict, cold (compile): {cold:6.1f} s")
    print(f"full verdict, warm          : {warm:6.1f} s")
    print(f"-k mlp                      : {mlp:6.1f} s")


if __name__ == "__main__":
    main(*sys.argv[1:])
