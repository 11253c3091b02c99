"""Every bundled spec: full-verdict wall time and outcome, tiny-checkpoint training figures, and the
golden in bf16 (free-running and teacher-forced). Usage: python -m bench.family_report [spec ...]"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from bench._runner import REPO, verdict


def stage(result: dict, stage_id: str) -> dict:
    return next((s for s in result["stages"] if s["id"] == stage_id), {"status": "absent", "figures": {}})


def main(specs: list[str]) -> None:
    specs = specs or sorted(p.stem for p in (REPO / "port_specs").glob("*.toml"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in specs:
            artifacts = Path(tmp) / spec
            seconds, full = verdict(artifacts, spec=spec)
            _, bf16 = verdict(
                artifacts / "bf16", "-k", "compile or golden", "--autoport-dtype=bfloat16", spec=spec
            )
            training = (full.get("weights") or {}).get("training") or {}
            golden = stage(bf16, "golden")["figures"]
            rows.append(
                (
                    spec,
                    "PASSED" if full["passed"] else "FAILED",
                    f"{sum(s['status'] == 'passed' for s in full['stages'])}/{len(full['stages'])}",
                    f"{seconds:.0f}",
                    f"{training.get('seconds', '-')}",
                    f"{training.get('final_loss', '-')}",
                    f"{golden.get('token_match', '-')}",
                    f"{golden.get('teacher_forced_match', '-')}",
                )
            )
    header = ("spec", "verdict", "passed", "wall s", "train s", "final loss", "bf16 greedy", "bf16 forced")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)))


if __name__ == "__main__":
    main(sys.argv[1:])
