"""A self-contained HTML page for one verdict, built from the results JSON alone (so it works for any
run, old or new): inline CSS, plots embedded as data URIs, every text escaped. No network is needed
to view it."""

from __future__ import annotations

import base64
import html
import time
from pathlib import Path

from .results import write_atomic

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d232b;background:#f4f6f8}
main{max-width:1120px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #d5dbe1;padding-bottom:4px}
.meta{color:#56606b}.card{background:#fff;border:1px solid #d5dbe1;border-radius:6px;padding:12px 16px;margin:10px 0}
table{border-collapse:collapse;width:100%;background:#fff;font-size:13px}
th,td{border:1px solid #dde2e7;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eef1f4;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.bad td{background:#fdf1f0}tr.first td{background:#f9d9d6;font-weight:600}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;color:#fff}
.passed{background:#2e7d32}.failed,.error{background:#c62828}.skipped{background:#8a8f96}
.verdict{font-size:15px;padding:3px 12px}
pre{white-space:pre-wrap;word-break:break-word;background:#f7f8fa;border:1px solid #e1e5e9;padding:8px;margin:4px 0;font-size:12px}
.warn{background:#fff6e0;border-color:#f0c36d}.err{background:#fdecea;border-color:#f0a8a3}
img{max-width:100%;border:1px solid #d5dbe1;background:#fff}
.plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:10px}.plots .card{margin:0}
.grid{display:grid;grid-template-columns:repeat(var(--n),14px);gap:2px;margin:4px 0}
.cell{width:14px;height:14px;background:#cfe8d1;border-radius:2px}.cell.real{background:#c62828}
.cell.tie{background:#f0a030}.cell.first{outline:2px solid #1d232b}
.legend span{margin-right:14px}.tok{background:#fdecea;border-radius:3px;padding:0 3px;font-family:monospace}
.gold{background:#e3f2e5;border-radius:3px;padding:0 3px;font-family:monospace}
"""


def write_html_report(verdict: dict, path: Path) -> Path:
    """Write the report for ``verdict`` (a results JSON dict) to ``path``, atomically; returns ``path``."""
    path = Path(path)
    write_atomic(path, render(verdict, plots_dir=path.parent / "plots"))
    return path


def report_path(json_path: Path) -> Path:
    return Path(json_path).with_suffix(".html")


def render(verdict: dict, plots_dir: Path | None = None) -> str:
    stages = verdict.get("stages", [])
    model = str(verdict.get("model", "?"))
    passed = bool(verdict.get("passed"))
    cls, word = ("passed", "PASSED") if passed else ("failed", "FAILED")
    not_run = verdict.get("not_run_here") or {}
    if verdict.get("verdict") == "cpu-only":
        reasons = ", ".join(dict.fromkeys(not_run.values()))
        cls, word = "skipped", f"PASSED on the CPU path; not run here: {', '.join(not_run)} ({reasons})"
    parts = [
        f"<h1>autoport verdict: {_e(model)} <span class='badge verdict {cls}'>{_e(word)}</span></h1>",
        "<div class='meta'>"
        + " &middot; ".join(
            _e(x)
            for x in (
                f"target {verdict.get('target', '?')}",
                f"dtype {verdict.get('dtype', '?')}",
                f"{verdict.get('weights', {}).get('kind', '?')} weights",
                f"{verdict.get('duration_s', '?')} s",
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(verdict.get("started_at", 0))),
                "dry run" if verdict.get("dry_run") else "",
            )
            if x
        )
        + f"<br>spec <code>{_e(verdict.get('spec', ''))}</code></div>",
    ]
    if verdict.get("error"):
        parts.append(
            f"<div class='card err'><b>error before any stage ran</b><pre>{_e(verdict['error'])}</pre></div>"
        )
    for warning in verdict.get("warnings", []):
        parts.append(f"<div class='card warn'>warning: {_e(warning)}</div>")
    parts += _summary(stages)
    parts += _stage_table(stages)
    parts += _failures(stages)
    parts += _component_figures(stages)
    parts += _localisation(stages)
    parts += _golden(stages)
    parts += _generated(stages)
    parts += _plots(verdict, stages, plots_dir)
    parts += _versions(verdict, stages)
    body = "\n".join(parts)
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>autoport: {_e(model)} {'PASSED' if passed else 'FAILED'}</title>"
        f"<style>{_CSS}</style></head><body><main>\n{body}\n</main></body></html>\n"
    )


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _badge(status: str) -> str:
    return f"<span class='badge {_e(status)}'>{_e(status)}</span>"


def _key_figure(stage: dict) -> str:
    from dataclasses import fields

    from .results import StageRecord, key_figure

    known = {f.name for f in fields(StageRecord)}
    try:
        return key_figure(StageRecord(**{k: v for k, v in stage.items() if k in known}))
    except (TypeError, KeyError, ValueError, IndexError):
        return ""


def _summary(stages: list[dict]) -> list[str]:
    """The first failure in one line, and the module the model check names: where to look first."""
    failed = [s for s in stages if s.get("status") in ("failed", "error")]
    if not failed:
        return []
    first = failed[0]
    line = (first.get("message") or "").splitlines()[0] if first.get("message") else first.get("status", "")
    named = next(
        (
            s["figures"]["first_divergence"]
            for s in stages
            if isinstance(s.get("figures", {}).get("first_divergence"), str)
        ),
        None,
    )
    module = f"<br>first divergent module: <b><code>{_e(named)}</code></b>" if named else ""
    return [
        f"<div class='card err'>{len(failed)} of {len(stages)} stages failed; first: "
        f"<b><code>{_e(first.get('id'))}</code></b>: {_e(line)}{module}</div>"
    ]


def _stage_table(stages: list[dict]) -> list[str]:
    rows = [
        f"<tr><td><code>{_e(s.get('id'))}</code></td><td>{_badge(s.get('status', '?'))}</td>"
        f"<td class='num'>{float(s.get('duration_s', 0)):.1f} s</td><td>{_e(_key_figure(s))}</td></tr>"
        for s in stages
    ]
    return [
        "<h2>Stages</h2>",
        "<table id='stages'><tr><th>stage</th><th>status</th><th>time</th><th>key figure</th></tr>",
        *rows,
        "</table>",
    ]


def _failures(stages: list[dict]) -> list[str]:
    failed = [s for s in stages if s.get("status") in ("failed", "error")]
    if not failed:
        return []
    out = ["<h2>Failures</h2>"]
    for s in failed:
        out.append(
            f"<div class='card err'><b><code>{_e(s['id'])}</code></b><pre>{_e(s.get('message', ''))}</pre>"
        )
        if s.get("traceback"):
            out.append(f"<details><summary>traceback</summary><pre>{_e(s['traceback'])}</pre></details>")
        out.append("</div>")
    return out


def _scalar(value) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "yes", False: "no", None: ""}[value]
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list) and all(isinstance(v, (int, float)) for v in value):
        return "\u2013".join(_scalar(v) for v in value)
    return str(value)


_COMPONENT_COLUMNS = ("mode", "r", "band", "rel_fro", "max_abs", "reference_rel_fro", "first_divergence")


def _component_figures(stages: list[dict]) -> list[str]:
    picked = [s for s in stages if s.get("stage") in ("component", "model", "sharding") and s.get("figures")]
    if not picked:
        return []
    columns = [c for c in _COMPONENT_COLUMNS if any(c in s["figures"] for s in picked)]
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    rows = []
    for s in picked:
        cells = "".join(
            f"<td class='num'>{_e(_scalar(s['figures'][c])) if c in s['figures'] else ''}</td>"
            for c in columns
        )
        rows.append(
            f"<tr><td><code>{_e(s['id'])}</code></td><td>{_badge(s.get('status', '?'))}</td>{cells}</tr>"
        )
    return [
        "<h2>Per-component figures</h2>",
        f"<table><tr><th>check</th><th>status</th>{head}</tr>",
        *rows,
        "</table>",
    ]


def _localisation(stages: list[dict]) -> list[str]:
    out = []
    for s in stages:
        table = s.get("figures", {}).get("localisation")
        if not isinstance(table, list) or not table or not all(isinstance(r, dict) for r in table):
            continue
        columns = list(dict.fromkeys(k for row in table for k in row))
        first = s["figures"].get("first_divergence")
        out.append(f"<h2>Localisation: <code>{_e(s['id'])}</code></h2>")
        out.append(f"<p>first divergent module: <b>{_e(first or 'none of the mapped modules')}</b></p>")
        out.append("<table><tr>" + "".join(f"<th>{_e(c)}</th>" for c in columns) + "</tr>")
        for row in table:
            tint = (
                " class='first'"
                if first and row.get("module") == first
                else (" class='bad'" if row.get("ok") is False else "")
            )
            out.append(
                f"<tr{tint}>" + "".join(f"<td>{_e(_scalar(row.get(c, '')))}</td>" for c in columns) + "</tr>"
            )
        out.append("</table>")
    return out


def _golden(stages: list[dict]) -> list[str]:
    golden = next((s for s in stages if s.get("stage") == "golden" and s.get("figures")), None)
    if golden is None:
        return []
    f = golden["figures"]
    texts = next((s["figures"].get("texts") for s in stages if s.get("stage") == "generate"), None) or []
    out = ["<h2>Golden (FP32 HuggingFace)</h2>"]
    if "token_match" in f:
        out.append(
            f"<p>greedy token match <b>{f['token_match']:.1%}</b> (threshold {f.get('threshold', 0):.0%}), "
            f"teacher-forced {f.get('teacher_forced_match', 0):.1%}, mode {_e(f.get('mode', 'token'))}</p>"
        )
    out += _error_profile(f)
    divergences = [("free-running", d) for d in f.get("free_running_divergences", [])]
    divergences += [("teacher-forced", d) for d in f.get("divergences", [])]
    if divergences:
        out.append(
            "<table><tr><th>kind</th><th>prompt</th><th>new token</th><th>golden</th><th>port</th>"
            "<th>golden margin</th><th>in golden top-5</th><th>the port's text for this prompt</th></tr>"
        )
        for kind, d in divergences[:60]:
            prompt = d.get("prompt", 0)
            context = texts[prompt] if isinstance(prompt, int) and 0 <= prompt < len(texts) else ""
            out.append(
                f"<tr><td>{kind}</td><td class='num'>{_e(prompt)}</td><td class='num'>{_e(d.get('position'))}</td>"
                f"<td>{_token(d, 'golden')}</td><td>{_token(d, 'port')}</td>"
                f"<td class='num'>{_e(_scalar(d.get('golden_margin', '')))}</td>"
                f"<td>{_e(_scalar(d.get('port_token_in_golden_top5', '')))}</td><td>{_e(context)}</td></tr>"
            )
        out.append("</table>")
    return out


def _token(d: dict, side: str) -> str:
    css = "gold" if side == "golden" else "tok"
    text = f" <span class='{css}'>{_e(repr(d[side + '_text']))}</span>" if f"{side}_text" in d else ""
    return f"{_e(d.get(side + '_token', ''))}{text}"


def _error_profile(f: dict) -> list[str]:
    """One row of cells per prompt, one cell per decode step: where the port's token differs from the
    golden's (teacher-forced; red: real, orange: near-tie), the free-running first divergence outlined."""
    first = f.get("first_divergence") or []
    total = f.get("total") or 0
    if not first or not total:
        return []
    steps = max(1, total // len(first))
    marks = {(d.get("prompt"), d.get("position")): d for d in f.get("divergences", [])}
    out = [
        "<h3>Decode-step error profile</h3>",
        "<div class='legend'><span style='color:#7cb982'>&#9632; match</span>"
        "<span style='color:#c62828'>&#9632; divergence</span><span style='color:#f0a030'>&#9632; near-tie</span>"
        "<span>&#9633; free-running output first diverges</span></div>",
    ]
    for prompt, position in enumerate(first):
        cells = []
        for step in range(steps):
            d = marks.get((prompt, step))
            kind = "" if d is None else (" tie" if d.get("golden_margin", 1) < 0.01 else " real")
            kind += " first" if position == step else ""
            cells.append(f"<div class='cell{kind}' title='prompt {prompt} step {step}'></div>")
        out.append(f"<div>prompt {prompt}</div><div class='grid' style='--n:{steps}'>{''.join(cells)}</div>")
    return out


def _generated(stages: list[dict]) -> list[str]:
    texts = next((s["figures"].get("texts") for s in stages if s.get("stage") == "generate"), None)
    if not texts:
        return []
    return ["<h2>Generated text</h2>", *(f"<pre>[{i}] {_e(t)}</pre>" for i, t in enumerate(texts))]


def _plots(verdict: dict, stages: list[dict], plots_dir: Path | None) -> list[str]:
    files = [Path(s["figures"]["plot"]) for s in stages if isinstance(s.get("figures", {}).get("plot"), str)]
    if plots_dir is not None and plots_dir.is_dir():
        since = float(verdict.get("started_at", 0)) - 1
        files += [
            p
            for p in sorted(plots_dir.glob(f"{verdict.get('model', '')}-*.png"))
            if p.stat().st_mtime >= since
        ]
    out = []
    for file in dict.fromkeys(files):
        try:
            data = base64.b64encode(file.read_bytes()).decode("ascii")
        except OSError:
            continue
        out.append(
            f"<div class='card'><div><code>{_e(file.name)}</code></div>"
            f"<img alt='{_e(file.stem)}' src='data:image/png;base64,{data}'></div>"
        )
    return ["<h2>Diagnostic plots</h2>", "<div class='plots'>", *out, "</div>"] if out else []


def _versions(verdict: dict, stages: list[dict]) -> list[str]:
    rows = [(k, v) for k, v in verdict.get("versions", {}).items()]
    for s in stages:
        if s.get("stage") == "compile":
            rows += [
                (f"artifact {k}", s["figures"][k]) for k in ("key", "artifact") if k in s.get("figures", {})
            ]
    if verdict.get("weights", {}).get("path"):
        rows.append(("weights", verdict["weights"]["path"]))
    if not rows:
        return []
    body = "".join(f"<tr><th>{_e(k)}</th><td><code>{_e(v)}</code></td></tr>" for k, v in rows)
    return ["<h2>Versions and artifacts</h2>", f"<table>{body}</table>"]
