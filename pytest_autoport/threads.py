"""How many CPU threads torch uses in a verdict.

A small model gains nothing from intra-op threads, and on a machine already busy (CI runners, several
verdicts at once) torch's default of one thread per core oversubscribes it: the run slows down several
times over. So a model up to :data:`SMALL_MODEL_PARAMETERS` runs on one thread by default; a larger one
keeps torch's default. ``--autoport-threads=N`` chooses, and a thread count set in the environment
(``OMP_NUM_THREADS``) is left as it is.
"""

from __future__ import annotations

import os

SMALL_MODEL_PARAMETERS = 100_000_000


def choose_threads(requested: int | None, parameters: int, environ=os.environ) -> tuple[int | None, str]:
    """(threads to set or None to leave torch's setting, why); ``requested`` 0 keeps torch's default."""
    if requested == 0:
        return None, "torch's default (--autoport-threads=0)"
    if requested:
        return requested, f"--autoport-threads={requested}"
    if environ.get("OMP_NUM_THREADS"):
        return None, f"OMP_NUM_THREADS={environ['OMP_NUM_THREADS']} (torch's setting kept)"
    if parameters <= SMALL_MODEL_PARAMETERS:
        return 1, (
            f"one thread: a small model ({parameters:,} parameters) gains nothing from more and a busy "
            "machine loses to oversubscription (--autoport-threads=N overrides)"
        )
    return None, f"torch's default ({parameters:,} parameters)"


def apply_threads(requested: int | None, parameters: int) -> dict:
    """Set torch's thread count as :func:`choose_threads` says; returns the figures (threads, why)."""
    import torch

    threads, why = choose_threads(requested, parameters)
    if threads is not None:
        torch.set_num_threads(threads)
    return {"threads": torch.get_num_threads(), "threads_reason": why}
