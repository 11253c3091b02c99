"""``autoport spec-from-validation-config``: the spec equivalent to an Autoport validation JSON
(the converter lives with ``autoport validate``, so the two stay one thing)."""

from __future__ import annotations

from .validate_command import add_spec_arguments as add_arguments
from .validate_command import run_spec as run

__all__ = ["add_arguments", "run"]
