"""Stand-in for torch-neuronx (contract tests only): records that it was imported."""

import _standin_log

_standin_log.record("import", module=__name__)
__version__ = "0.0.0+stand-in"
