"""Stage ``hygiene``: the port's own source follows the porting rules (see ``pytest_autoport.hygiene``)."""

from __future__ import annotations

from ..errors import StageFailure


def run(session) -> dict:
    from ..hygiene import check_port, hf_class_names
    from .compile import _python_files

    spec = session.spec
    files = _python_files(spec.port_class_file.parent)
    violations = check_port(files, hf_class_names(spec.model.hf_model_class), spec.hygiene)
    figures = {"files": len(files), "violations": len(violations), "waived": dict(spec.hygiene)}
    if violations:
        lines = [v.format(spec.project_root) for v in violations]
        raise StageFailure(
            f"{len(violations)} porting-rule violation(s):\n"
            + "\n".join(lines)
            + '\n(waive a rule only with a reason: [hygiene] <rule> = "why" in the spec)',
            figures,
        )
    return figures
