"""The verdict: per-stage records, the results JSON, the terminal table and port_summary.md.

The JSON is a stable interface (agents and CI parse it): keys are only ever added, never renamed.
"""

from __future__ import annotations

import glob
import json
import os
import re
import socket
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .reduced_layers import layers_text

SCHEMA_VERSION = 1
FIGURE_PREFIX = "autoport."
NOT_RUN_HERE = (
    "not_run_here"  # figure of a stage skipped because this machine cannot run it (e.g. "no NeuronCores")
)
SUPERSEDED = "superseded"  # figure of a CPU stand-in stage skipped because its device stage runs here


@dataclass
class StageRecord:
    stage: str
    id: str
    nodeid: str
    status: str  # passed | failed | skipped | error
    duration_s: float = 0.0
    figures: dict = field(default_factory=dict)
    message: str = ""
    traceback: str = ""  # only for errors inside the harness or the port, not for failed checks


@dataclass
class Verdict:
    model: str
    spec: str
    target: str
    dtype: str
    dry_run: bool = False
    weights: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    stages: list[StageRecord] = field(default_factory=list)
    error: str = ""  # a failure before any stage ran (a bad spec)
    warnings: list[str] = field(default_factory=list)  # the spec is valid but checks less than it could
    started_at: float = field(default_factory=time.time)
    partial: bool = False  # a selection or a dry run: written beside the full verdict, never over it
    selection: dict = field(default_factory=dict)  # planned/selected/deselected counts, -k, -m, --lf
    layers: dict | None = None  # reduced-layer mode: {"judged": N, "total": M}; None for the full model

    @property
    def passed(self) -> bool:
        judged = self.judged_stages
        return not self.error and bool(judged) and all(s.status == "passed" for s in judged)

    @property
    def judged_stages(self) -> list[StageRecord]:
        """Every stage but a CPU stand-in skipped because its device stage runs on this machine."""
        return [s for s in self.stages if not (s.status == "skipped" and SUPERSEDED in s.figures)]

    @property
    def outcome(self) -> str:
        """passed | failed | dry-run (a dry run with nothing failed: it proves nothing either way) |
        cpu-only (every stage that ran passed; the others were skipped because this machine cannot
        run them, e.g. the device stages of the nxdi target without NeuronCores)."""
        if self.passed:
            return "passed"
        judged = self.judged_stages
        nothing_failed = not self.error and all(s.status in ("passed", "skipped") for s in judged)
        if self.dry_run and nothing_failed:
            return "dry-run"
        skipped = [s for s in judged if s.status == "skipped"]
        if (
            nothing_failed
            and any(s.status == "passed" for s in judged)
            and all(NOT_RUN_HERE in s.figures for s in skipped)
        ):
            return "cpu-only"
        return "failed"

    @property
    def not_run_here(self) -> dict[str, str]:
        """Stage id -> why this machine could not run it, for the stages skipped for that reason."""
        return {s.id: s.figures[NOT_RUN_HERE] for s in self.stages if NOT_RUN_HERE in s.figures}

    def record(self, rec: StageRecord) -> None:
        existing = next((i for i, s in enumerate(self.stages) if s.nodeid == rec.nodeid), None)
        if existing is None:
            self.stages.append(rec)
        elif rec.status != "passed" or self.stages[existing].status == "passed":
            self.stages[existing] = rec  # a teardown error overrides a passed call

    def to_dict(self) -> dict:
        return {
            "schema_version": SCHEMA_VERSION,
            "model": self.model,
            "spec": self.spec,
            "target": self.target,
            "dtype": self.dtype,
            "dry_run": self.dry_run,
            "passed": self.passed,
            "verdict": self.outcome,
            "partial": self.partial,
            "selection": self.selection,
            "weights": self.weights,
            "versions": self.versions,
            "error": self.error,
            "started_at": self.started_at,
            "duration_s": round(time.time() - self.started_at, 3),
            "stages": [asdict(s) for s in self.stages],
            "warnings": self.warnings,
            "not_run_here": self.not_run_here,
            "layers": self.layers,
        }


def key_figure(rec: StageRecord) -> str:
    f = rec.figures
    if rec.status == "skipped":
        return rec.message.splitlines()[0][:100] if rec.message else ""
    if rec.status in ("failed", "error") and (rec.traceback or not f):
        return error_figure(rec.message)
    if rec.stage == "env":
        return f"torch {f.get('torch', '?')}, transformers {f.get('transformers', '?')}"
    if rec.stage == "weights":
        built = f.get("spent_before_s")
        made = f" (built in {built:.1f} s)" if built else ""
        crossed = f", {len(f['crossed_tensors'])} filled crosswise" if f.get("crossed_tensors") else ""
        return f"{f.get('hf_tensors', '?')} tensors, {f.get('weights_kind', '?')} weights{made}{crossed}"
    if rec.stage in ("component", "model") and "r" in f:
        text = (
            f"R {_num(f['r'], '.3f')} (band {f['band'][0]}-{f['band'][1]}), rel_fro {_num(f.get('rel_fro'))}"
        )
        return text + (" WARN over-precision" if "warning" in f else "")
    if rec.stage in ("component", "model") and "rel_fro" in f:
        return f"rel_fro {_num(f['rel_fro'])}, max_abs {_num(f.get('max_abs'))}"
    if rec.stage == "compile" and "graphs" in f:
        return f"{f['graphs']} graphs, {'compiled' if f.get('compiled') else 'reused'}" + (
            ", rebuilt: corrupt entry" if f.get("rebuilt_after") else ""
        )
    if rec.stage == "generate" and "decode_tokens_per_s" in f:
        return f"{f['decode_tokens_per_s']} tok/s, ttft {f.get('ttft_s')} s"
    if rec.stage == "golden" and "token_match" in f:
        return (
            f"token match {f['token_match']:.1%} (>= {f['threshold']:.0%}), "
            f"teacher-forced {f.get('teacher_forced_match', 0):.1%}"
            + (f", HF golden {_GOLDEN_CACHE[f['cache']]}" if f.get("cache") in _GOLDEN_CACHE else "")
            + (", streaming reference on the port's trajectory" if f.get("reference") == "streaming" else "")
        )
    return rec.message.splitlines()[0][:70] if rec.message else ""


_GOLDEN_CACHE = {"hit": "cached", "miss": "computed", "rebuilt": "rebuilt"}
_USER_FRAME = re.compile(r"^  (\S+:\d+) in \S+$", re.MULTILINE)  # as failure_text.short_failure writes it


def error_figure(message: str, width: int = 110) -> str:
    """An error's first line, shortened, and the innermost frame in the user's code it names."""
    if not message:
        return ""
    first = message.splitlines()[0]
    frames = _USER_FRAME.findall(message)
    if not frames:
        return first[:width]
    where = f" at {frames[-1]}"
    room = max(width - len(where), 30)
    return (first if len(first) <= room else first[: room - 3] + "...") + where


def _num(value, fmt: str = ".2e") -> str:
    return format(value, fmt) if isinstance(value, (int, float)) else str(value)


def format_table(verdict: Verdict) -> list[str]:
    width = max([len(s.id) for s in verdict.stages] + [5])
    lines = [f"{'stage':<{width}}  {'status':<7}  {'time':>7}  key figure"]
    for s in verdict.stages:
        lines.append(f"{s.id:<{width}}  {s.status:<7}  {s.duration_s:>6.1f}s  {key_figure(s)}")
    generated = next((s.figures.get("texts") for s in verdict.stages if s.stage == "generate"), None)
    for i, text in enumerate(generated or []):
        lines.append(f"generated[{i}]: {text!r}")
    lines += [f"warning: {w}" for w in verdict.warnings]
    reduced = (
        f", {layers_text(verdict.layers['judged'], verdict.layers.get('total'))}" if verdict.layers else ""
    )
    if verdict.target == "?":  # the spec did not load: its error is above, there is nothing else to name
        lines.append(f"verdict: {verdict_word(verdict)} ({verdict.model}: the spec does not load)")
    else:
        lines.append(
            f"verdict: {verdict_word(verdict)} ({verdict.model}, target {verdict.target}, "
            f"{verdict.weights.get('kind', '?')} weights{reduced})"
        )
    partial = partial_text(verdict)
    if partial:
        lines.append(f"{partial}; the full verdict is left as it was")
    return lines


def verdict_word(verdict: Verdict) -> str:
    if verdict.outcome == "dry-run":
        counts = {status: sum(s.status == status for s in verdict.stages) for status in ("passed", "skipped")}
        return f"DRY RUN: {counts['passed']} passed, {counts['skipped']} skipped"
    if verdict.outcome == "cpu-only":
        not_run = verdict.not_run_here
        reasons = ", ".join(dict.fromkeys(not_run.values()))
        word = f"PASSED on the CPU path; not run here: {', '.join(not_run)} ({reasons})"
    else:
        word = "PASSED" if verdict.passed else "FAILED"
    partial = verdict.partial and (verdict.outcome != "cpu-only" or selection_is_partial(verdict.selection))
    return f"PARTIAL, {word}" if partial else word


def partial_text(verdict: Verdict) -> str:
    """Why a partial verdict is partial ("" for a full one)."""
    if not verdict.partial:
        return ""
    if selection_is_partial(verdict.selection):
        return f"partial run: {selection_text(verdict.selection)}"
    if verdict.layers is not None:
        judged = layers_text(verdict.layers["judged"], verdict.layers.get("total"))
        return f"partial verdict: {judged} judged (reduced-layer mode), not the whole model"
    if verdict.outcome != "cpu-only":
        return f"partial run: {selection_text(verdict.selection)}"
    return "partial verdict: the stages this machine cannot run were skipped"


def selection_is_partial(selection: dict) -> bool:
    """A run that did not select every stage: a dry run, or a selection (-k, -m, --lf, node ids)."""
    if not selection:
        return False
    if selection.get("dry_run"):
        return True
    if (
        selection.get("planned") is None
    ):  # not collected (a broken spec): partial only if a selection was asked
        return bool(
            selection.get("keyword")
            or selection.get("markers")
            or selection.get("last_failed")
            or selection.get("deselect")
        )
    return selection["selected"] < selection["planned"]


def selection_text(selection: dict) -> str:
    """``3 of 33 stages selected (-k mlp, --lf)`` from a verdict's ``selection``."""
    how = [f"-k {selection['keyword']}"] if selection.get("keyword") else []
    how += [f"-m {selection['markers']}"] if selection.get("markers") else []
    how += ["--lf"] if selection.get("last_failed") else []
    how += ["--deselect"] if selection.get("deselect") else []
    how += ["--autoport-dry-run"] if selection.get("dry_run") else []
    if selection.get("planned") is None:
        text = "stages not collected"
    else:
        text = f"{selection['selected']} of {selection['planned']} stages selected"
    return text + (f" ({', '.join(how)})" if how else "")


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, flushed to disk, and a rename, with the
    mode a plain ``open()`` would give (0666 less the umask): whatever kills the writer, ``path`` is
    the previous complete file or the new one. A killed writer's temporary file is removed by the
    next write. An OSError names ``path`` (or the folder that could not be made), never the
    temporary file."""
    from .artifacts.files import fsync_folder

    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_dead_writers_files(path)
        prefix = f".{path.name}.{socket.gethostname()}.{os.getpid()}."
        fd, tmp = tempfile.mkstemp(prefix=prefix, dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), 0o666 & ~_umask())
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_folder(path.parent)
    except OSError as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        named = exc.filename if exc.filename and Path(exc.filename) in path.parents else path
        problem = "exists but is not a folder" if isinstance(exc, FileExistsError) else exc.strerror
        raise OSError(exc.errno, problem or str(exc), str(named)) from exc
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise


def _remove_dead_writers_files(path: Path) -> None:
    """Temporary files of ``path`` left by writers on this host that no longer run (killed mid-write)."""
    from .artifacts.processes import _pid_alive

    host = socket.gethostname()
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.{glob.escape(host)}.*"):
        pid = leftover.name[len(f".{path.name}.{host}.") :].split(".", 1)[0]
        if pid.isdigit() and _pid_alive(int(pid)) is False:
            leftover.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_outputs(verdict: Verdict, artifacts_dir: Path) -> tuple[Path, Path]:
    """The results JSON and port_summary.md; a partial run's go beside the full ones
    (``<model>.partial.json``, ``port_summary.partial.md``) so CI never reads a partial verdict."""
    suffix = ".partial" if verdict.partial else ""
    json_path = artifacts_dir / "results" / f"{verdict.model}{suffix}.json"
    write_atomic(json_path, json.dumps(verdict.to_dict(), indent=2, default=str) + "\n")
    summary_path = artifacts_dir / "traces" / f"port_summary{suffix}.md"
    write_atomic(summary_path, port_summary(verdict))
    return json_path, summary_path


def port_summary(verdict: Verdict) -> str:
    lines = [
        f"# Port summary: {verdict.model}",
        "",
        f"- verdict: **{verdict_word(verdict)}**",
        *([f"- {partial_text(verdict)}"] if verdict.partial else []),
        f"- spec: `{verdict.spec}`; target `{verdict.target}`; dtype `{verdict.dtype}`",
        f"- weights: {verdict.weights.get('kind', '?')} (`{verdict.weights.get('path', '?')}`)",
        f"- versions: {', '.join(f'{k} {v}' for k, v in verdict.versions.items())}",
        "",
    ]
    lines[-1:-1] = [f"- warning: {w}" for w in verdict.warnings]
    if verdict.error:
        lines += ["## Error", "", "```", verdict.error, "```", ""]
    lines += ["| stage | status | key figure |", "|---|---|---|"]
    lines += [f"| `{s.id}` | {s.status} | {key_figure(s)} |" for s in verdict.stages]
    failures = [s for s in verdict.stages if s.status in ("failed", "error")]
    if failures:
        lines += ["", "## Failures", ""]
        for s in failures:
            lines += [f"### {s.id}", "", "```", s.message, "```", ""]
    return "\n".join(lines) + "\n"
