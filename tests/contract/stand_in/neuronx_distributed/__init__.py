"""Stand-in for neuronx-distributed (contract tests only): records that it was imported.

Like neuronx-distributed >= 0.11 it reads NXD_CPU_MODE at each call, so it defines no CPU_MODE constant.
"""

import _standin_log

_standin_log.record("import", module=__name__)
__version__ = "0.0.0+stand-in"
