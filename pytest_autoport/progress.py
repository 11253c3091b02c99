"""Progress bars for long steps, written to the real terminal so pytest's output capture does not hide
them, and switched off when stderr is not a terminal (CI logs, pipes)."""

from __future__ import annotations

import sys


def progress(iterable=None, **kwargs):
    """``tqdm`` on the process's original stderr when it is a terminal, else a silent one."""
    from tqdm.auto import tqdm

    stream = sys.__stderr__
    terminal = bool(stream is not None and stream.isatty())
    return tqdm(iterable, file=stream, disable=not terminal, leave=False, **kwargs)
