"""Stage ``preflight``: the HF architecture against the spec's tp degree and sequence length, and the
config keys that change the model but that the port never reads (``pytest_autoport.analyze``)."""

from __future__ import annotations

from ..errors import StageFailure


def run(session) -> dict:
    from ..analyze import analyze, preflight
    from .compile import port_sources

    spec = session.spec
    report = analyze(session.hf_config)
    text = "\n".join(
        p.read_text(errors="replace") for p in port_sources(spec.port_class_file.parent, spec.project_root)
    )
    p = spec.port
    problems = preflight(report, p.tp_degree, p.max_seq_len, text, session.hf_config, p.ep_degree)
    a = report["attention"]
    figures = {
        "attention": f"{a['kind']} {a['heads']}/{a['kv_heads']} heads, head_dim {a['head_dim']}",
        "positional": report["positional"]["kind"],
        "mlp": report["mlp"]["kind"],
        "custom_work": report["custom_work"],
        "problems": problems,
    }
    if problems:
        raise StageFailure("pre-flight: " + "; ".join(problems), figures)
    return figures
