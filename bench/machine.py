"""The machine a benchmark ran on: CPUs, memory, library versions, thread settings, load average."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages."""
    return [round(x, 2) for x in os.getloadavg()]


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    return match.group(1).strip() if match else "unknown"


def meminfo_bytes(field: str) -> int | None:
    try:
        match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None


def machine_info(env: dict) -> dict:
    """What the figures depend on; ``env``: the environment the benchmark's children ran with."""
    import torch
    import transformers

    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "mem_total_bytes": meminfo_bytes("MemTotal"),
        "mem_available_bytes": meminfo_bytes("MemAvailable"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "omp_num_threads": env.get("OMP_NUM_THREADS"),
        "mkl_num_threads": env.get("MKL_NUM_THREADS"),
    }
