"""Put on PYTHONPATH by the real-NxDI tier for the processes it starts (verdicts, the envcheck
child, torchrun ranks): NxDI/NxD from ``AUTOPORT_NXDI_SRC`` on sys.path, and import stand-ins for
the Neuron SDK's binary packages that are missing here. Test-only: never on the product's path."""

import os
import sys

_src = os.environ.get("AUTOPORT_NXDI_SRC")
if _src and _src not in sys.path:
    sys.path.insert(0, _src)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
try:
    import binary_stand_ins

    binary_stand_ins.install()
finally:
    sys.path.pop(0)
