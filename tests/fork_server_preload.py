"""Imported once by the fork server of ``forked_pytest``: the modules every verdict imports, so that
forked runs start with them loaded. The harness itself is left out (each run imports it afresh, with
that run's environment), and so is anything first imported by a test."""

import gc
import sys
from importlib.metadata import entry_points

import forked_pytest

forked_pytest.import_model_modules()

# the other pytest plugins every run loads (anyio's probes its event-loop backends on import)
for plugin in entry_points(group="pytest11"):
    if not plugin.value.startswith("pytest_autoport"):
        try:
            plugin.load()
        except Exception:  # noqa: BLE001 - a plugin that does not load fails the runs that load it, as before
            pass

for name in [m for m in sys.modules if m == "pytest_autoport" or m.startswith("pytest_autoport.")]:
    del sys.modules[name]

# what the server holds is never freed: the runs' garbage collections (pytest runs several at exit)
# need not walk it
gc.collect()
gc.freeze()
