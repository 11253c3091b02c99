"""Time spent building or loading what the stages need (the tiny checkpoint's training, the FP32
reference's load): announced on the terminal when it starts, where pytest's output capture does not
hide it, and credited to a stage item (figure ``spent_s``: what -> seconds).

A step taken while an item runs is credited to that item, inside its time. A step taken at collection
(the tiny checkpoint is built there, because the component items depend on its config) is credited
to the ``weights`` item, or to the first item run when ``weights`` is not selected, and added to that
item's time in the verdict (figure ``spent_before_s``)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

ANNOUNCE_PREFIX = "autoport: "


class TimeSpent:
    def __init__(self):
        self.announce: Callable[[str], None] | None = None  # set by the plugin: one terminal line
        self._during_item: dict[str, float] = {}
        self._before_items: dict[str, float] = {}
        self.item_running = False

    @contextlib.contextmanager
    def step(self, what: str, note: str = "", announce: bool = True):
        """Time ``what``; announce it (with ``note``) when it starts and when it ends."""
        if announce:
            self._say(f"{what}{f' ({note})' if note else ''} ...")
        start = time.perf_counter()
        try:
            yield
        finally:
            seconds = round(time.perf_counter() - start, 3)
            spent = self._during_item if self.item_running else self._before_items
            spent[what] = round(spent.get(what, 0.0) + seconds, 3)
            if announce:
                self._say(f"{what}: {seconds:.1f} s")

    def take(self, credit_collection: bool) -> dict:
        """The figures for the item that just ran: what it spent, plus what collection spent when
        ``credit_collection``; each step is credited once."""
        figures = {}
        spent = dict(self._during_item)
        self._during_item.clear()
        if credit_collection and self._before_items:
            figures["spent_before_s"] = round(sum(self._before_items.values()), 3)
            spent.update(self._before_items)
            self._before_items.clear()
        if spent:
            figures["spent_s"] = spent
        return figures

    def _say(self, text: str) -> None:
        if self.announce is not None:
            self.announce(ANNOUNCE_PREFIX + text)


def terminal_line(config, text: str) -> None:
    """Write ``text`` as its own line on pytest's terminal, output capture suspended (collection and
    stage items alike)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    capture = config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        reporter.ensure_newline()
        reporter.write_line(text)
