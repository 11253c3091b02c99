"""Wall time of the bundled Llama verdict against the import floor (``python -c "import torch,
transformers; from transformers import LlamaForCausalLM"``): cold (nothing in the artifact folder: graphs
compiled, golden computed; the tiny checkpoint is trained only if the project has none yet), warm
(everything cached) and the ``-k mlp`` inner loop (warm), each the median of ``repeats`` runs interleaved
with the floor's, and the warm run's golden figures (a warm golden spends 0 s on the HF model).

Usage: python -m bench.verdict_timing [--spec llama] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from bench._runner import REPO, compile_per_bucket, import_floor, stage, verdict


def measure(artifacts: Path, spec: str = "llama", repeats: int = 3) -> dict:
    """Figures of the verdict timings; ``artifacts`` (empty or absent) is left warm for later runs."""
    weights_existed = (REPO / "agent_artifacts" / "data" / spec).exists()
    cold, cold_result = verdict(artifacts, spec=spec)
    floors, warms, mlps, runs = [], [], [], []
    for _ in range(repeats):  # interleaved, so that a change in the machine's load hits all three alike
        floors.append(round(import_floor(), 2))
        seconds, result = verdict(artifacts, spec=spec)
        warms.append(round(seconds, 2))
        runs.append(result)
        mlps.append(round(verdict(artifacts, "-k", "mlp", spec=spec)[0], 2))
    floor, warm, mlp = (round(statistics.median(x), 2) for x in (floors, warms, mlps))
    golden = stage(runs[-1], "golden")["figures"]
    cold_golden = stage(cold_result, "golden")["figures"]
    return {
        "spec": spec,
        "repeats": repeats,
        "import_floor_s": floor,
        "import_floor_samples_s": floors,
        "cold_s": round(cold, 2),
        "cold_verdict": cold_result["verdict"],
        "cold_trained_checkpoint": not weights_existed,
        "warm_s": warm,
        "warm_samples_s": warms,
        "warm_verdict": runs[-1]["verdict"],
        "mlp_s": mlp,
        "mlp_samples_s": mlps,
        "cold_over_floor": round(cold / floor, 2),
        "warm_over_floor": round(warm / floor, 2),
        "mlp_over_floor": round(mlp / floor, 2),
        "cold_golden": {k: cold_golden.get(k) for k in ("cache", "hf_seconds", "hf_model_loaded")},
        "warm_golden": {k: golden.get(k) for k in ("cache", "hf_seconds", "hf_model_loaded")},
        "compile_s_per_bucket": compile_per_bucket(cold_result),
        "stages": len(cold_result["stages"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spec", default="llama")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        figures = measure(Path(tmp) / "agent_artifacts", args.spec, args.repeats)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
