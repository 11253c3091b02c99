"""Stage ``env``: what this machine runs, and whether the selected target can run here."""

from __future__ import annotations

import platform


def run(session) -> dict:
    import torch
    import transformers

    figures = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "target": session.target_name,
    }
    reason = session.target.unavailable_reason()
    figures["target_available"] = reason is None
    if reason:
        figures["target_unavailable_reason"] = reason
    return figures
