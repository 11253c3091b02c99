"""Memory helpers of the benchmarks: a process's peak RSS, and the machine-wide lock that keeps two
memory-hungry jobs from overlapping."""

from __future__ import annotations

import fcntl
import re
import sys
import time
from contextlib import contextmanager
from pathlib import Path

BIGMEM_LOCK = Path("/tmp/bigmem.lock")  # the same file `flock /tmp/bigmem.lock <command>` takes


def peak_rss_bytes() -> int:
    """This process's peak resident set (VmHWM)."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) * 1024


@contextmanager
def bigmem_lock(enabled: bool = True):
    """Hold an exclusive ``flock`` on :data:`BIGMEM_LOCK` (waiting for it, with a note) while the block
    runs; yields the seconds spent waiting. Do not start the suite itself under ``flock`` on the same
    file: it would wait for itself."""
    if not enabled:
        yield 0.0
        return
    with open(BIGMEM_LOCK, "a") as handle:
        started = time.perf_counter()
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for {BIGMEM_LOCK} (another memory-hungry job runs)", file=sys.stderr, flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield time.perf_counter() - started
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
