"""A stage's time limit (``[timeouts]`` in the spec), held even where pytest-timeout's signal is lost:
a SIGALRM that lands in a finalizer (a weakref callback, ``__del__``) is swallowed as unraisable, and the
stage would pass however long it ran."""

from __future__ import annotations

import pytest


def check_time_limit(item: pytest.Item, elapsed: float) -> None:
    """Fail ``item`` if it ran past its ``timeout`` marker's limit (not while a debugger steps through)."""
    marker = item.get_closest_marker("timeout")
    limit = marker.args[0] if marker and marker.args else None
    if limit and elapsed > limit and not _debugging():
        pytest.fail(
            f"Timeout (>{limit:g}s): {item.name} ran {elapsed:.1f} s, past its limit "
            "([timeouts] in the spec sets it)",
            pytrace=False,
        )


def _debugging() -> bool:
    """pytest-timeout suspends its limits under a debugger, and so does this check."""
    try:
        from pytest_timeout import is_debugging
    except ImportError:
        return False
    return is_debugging()
