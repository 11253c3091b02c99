"""Stage ``env``: what this machine runs, and which stages of the selected target can run here."""

from __future__ import annotations

from ..envcheck import check_environment


def run(session) -> dict:
    report = check_environment(session.target_name)
    packages = {name: (p.version if p.status == "ok" else p.status) for name, p in report.packages.items()}
    figures = {
        "python": report.python,
        "torch": packages.get("torch"),
        "transformers": packages.get("transformers"),
        "target": session.target_name,
        "packages": packages,
        "neuron_cores": report.neuron_cores,
        "runnable_stages": report.runnable_stages.get(session.target_name, []),
        **getattr(session, "thread_figures", {}),
    }
    reason = session.target.unavailable_reason()
    figures["target_available"] = reason is None
    if reason:
        figures["target_unavailable_reason"] = reason
    return figures
