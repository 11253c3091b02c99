"""Stand-in for neuronx-distributed-inference, CONTRACT TESTS ONLY.

It imitates the few names and signatures ``pytest_autoport.targets.nxdi`` calls (read from NxDI 0.9.0
at commit 4bcdc54) and records every call in ``_standin_log`` (``app.forward`` with all its tensors).
It computes with a toy causal LM, whose logits depend on positions and mask through a KV cache, so
values can be checked; it shows nothing about NxDI's numerics, compiler or hardware.
"""

import _standin_log

_standin_log.record("import", module=__name__)
