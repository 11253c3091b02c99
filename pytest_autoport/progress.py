"""Progress bars for long steps, written to the terminal so pytest's output capture does not hide them
(pytest redirects file descriptor 2 itself, so the controlling terminal is opened when stderr is no
longer one), and switched off where there is no terminal (CI logs)."""

from __future__ import annotations

import functools
import sys


def progress(iterable=None, **kwargs):
    """``tqdm`` on the terminal when there is one, else a silent one."""
    from tqdm.auto import tqdm

    stream = terminal_stream()
    return tqdm(iterable, file=stream, disable=stream is None, leave=False, **kwargs)


def terminal_stream():
    stream = sys.__stderr__
    if stream is not None and stream.isatty():
        return stream
    return _open_tty()


@functools.lru_cache(maxsize=1)
def _open_tty():
    try:
        return open("/dev/tty", "w", encoding="utf-8")  # kept open for the process
    except OSError:  # no controlling terminal: CI, cron, a detached process
        return None
