"""The stand-in's shared call log. CONTRACT TESTS ONLY: nothing here is NxDI.

Every stand-in API records ``(name, details)`` here. A test puts a name into ``FAIL_AT`` to make
that call raise (``name#n``: only its n-th call), and sets ``OPTIONS`` to change a behaviour (e.g.
the context-encoding-only trap).
"""

import os

CALLS: list[tuple[str, dict]] = []
FAIL_AT: set[str] = set()
OPTIONS: dict = {}


def record(name: str, **details) -> None:
    """Log one call (with the NxD-relevant environment at that moment); raise if the test asked to."""
    details.setdefault("NXD_CPU_MODE", os.environ.get("NXD_CPU_MODE"))
    CALLS.append((name, details))
    if name in FAIL_AT or f"{name}#{len(find(name))}" in FAIL_AT:
        raise RuntimeError(f"stand-in {name} failed")


def names() -> list[str]:
    return [name for name, _ in CALLS]


def find(name: str) -> list[dict]:
    return [details for n, details in CALLS if n == name]
