"""Imported once by the fork server of ``forked_pytest``: the modules every verdict imports, so that
forked runs start with them loaded. The harness itself is left out (each run imports it afresh, with
that run's environment), and so is anything first imported by a test."""

import sys

import forked_pytest

forked_pytest.import_model_modules()

for name in [m for m in sys.modules if m == "pytest_autoport" or m.startswith("pytest_autoport.")]:
    del sys.modules[name]
