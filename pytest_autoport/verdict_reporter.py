"""The verdict from test reports: stage records, the selection that shaped the run, the results files
and the terminal table. Works the same in one process and in the xdist controller, which sees only
reports: a stage report is recognised by the stage id its item carries (``STAGE_KEY``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .html_report import report_path, write_html_report
from .results import (
    FIGURE_PREFIX,
    StageRecord,
    Verdict,
    format_table,
    selection_is_partial,
    write_outputs,
)
from .spec_checks import spec_warnings

STAGE_KEY = "autoport-stage"  # user property set on every stage item: its stage id
WORKER_OUTPUT_KEY = "autoport_selection"


def stage_of(stage_id: str) -> str:
    return stage_id.split("[", 1)[0]


def stage_id_of(report_or_item) -> str | None:
    """The stage id of one of our items or its reports; None for anything else."""
    return next((value for key, value in report_or_item.user_properties if key == STAGE_KEY), None)


class VerdictReporter:
    def __init__(self, state):
        self.state = state
        self.verdict: Verdict | None = None
        self.outputs: tuple[Path, Path] | None = None
        self.html: Path | None = None
        self.write_error = ""
        self.counts: dict | None = None  # {"planned": n, "selected": m}, from this process or a worker

    def _verdict(self) -> Verdict:
        if self.verdict is None:
            state = self.state
            spec = state.light_spec
            model, target, dtype = (
                (spec.name, spec.port.target, spec.port.dtype) if spec else (state.spec_path.stem, "?", "?")
            )
            self.verdict = Verdict(
                model=model,
                spec=str(state.spec_path),
                target=state.option("autoport_target") or target,
                dtype=state.option("autoport_dtype") or dtype,
                dry_run=bool(state.option("autoport_dry_run")),
                warnings=spec_warnings(spec) if spec else [],
            )
        return self.verdict

    def pytest_collectreport(self, report) -> None:
        if report.failed and report.nodeid == self.state.spec_nodeid:
            self._verdict().error = str(report.longrepr)

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        if self.state.planned is not None:
            selected = sum(stage_id_of(item) is not None for item in session.items)
            self.counts = {"planned": self.state.planned, "selected": selected}

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node, error) -> None:
        counts = getattr(node, "workeroutput", {}).get(WORKER_OUTPUT_KEY)
        if counts and self.counts is None:
            self.counts = counts

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        stage_id = stage_id_of(report)
        if stage_id is None:
            return
        if report.when != "call" and report.outcome == "passed":
            return
        status = report.outcome if report.when == "call" or report.outcome == "skipped" else "error"
        self.state.outcomes[stage_id] = status
        figures = {
            k[len(FIGURE_PREFIX) :]: v for k, v in report.user_properties if k.startswith(FIGURE_PREFIX)
        }
        verdict = self._verdict()
        if stage_id == "weights" and "weights" in figures:
            verdict.weights = figures["weights"]
        if stage_id == "weights" and "layers" in figures:
            verdict.layers = figures["layers"]
        if stage_id == "env":
            verdict.versions = {k: figures[k] for k in ("python", "torch", "transformers") if k in figures}
        verdict.record(
            StageRecord(
                stage=stage_of(stage_id),
                id=stage_id,
                nodeid=report.nodeid,
                status=status,
                duration_s=round(report.duration + figures.get("spent_before_s", 0.0), 3),
                figures=figures,
                message=_message(report),
                traceback=_traceback(report),
            )
        )

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        config = session.config
        if hasattr(config, "workerinput"):
            if self.counts is not None:
                config.workeroutput[WORKER_OUTPUT_KEY] = self.counts
            return
        if self.verdict is None:
            return
        from . import __version__

        verdict = self.verdict
        verdict.versions.setdefault("pytest_autoport", __version__)
        verdict.selection = self._selection(config)
        if not verdict.weights:  # the weights stage did not run: the checkpoint this process resolved
            verdict.weights = _resolved_weights(self.state)
        judged = self.state.option("autoport_layers")
        if judged is not None and verdict.layers is None:  # the weights stage did not run: count them here
            verdict.layers = {"judged": judged, "total": _total_layers(self.state)}
        # a cpu-only verdict, or one of the first N layers, is partial too: <model>.json holds only
        # verdicts that ran every stage on the whole model
        verdict.partial = (
            selection_is_partial(verdict.selection)
            or verdict.outcome == "cpu-only"
            or verdict.layers is not None
        )
        try:
            self.outputs = write_outputs(verdict, self.state.artifacts_dir)
            self.html = write_html_report(verdict.to_dict(), report_path(self.outputs[0]))
        except OSError as exc:
            self.write_error = f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc)
        if session.exitstatus == 0 and (self.write_error or (verdict.outcome == "failed")):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def _selection(self, config: pytest.Config) -> dict:
        counts = self.counts or {"planned": None, "selected": None}
        planned, selected = counts["planned"], counts["selected"]
        return {
            "planned": planned,
            "selected": selected,
            "deselected": planned - selected if planned is not None else None,
            "keyword": config.getoption("keyword", "") or "",
            "markers": config.getoption("markexpr", "") or "",
            "last_failed": bool(config.getoption("lf", False)),
            "deselect": list(config.getoption("deselect", None) or []),
            "dry_run": bool(config.getoption("autoport_dry_run")),
        }

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if self.verdict is None:
            return
        terminalreporter.section("autoport verdict")
        for line in format_table(self.verdict):
            terminalreporter.write_line(line)
        if self.outputs:
            json_path, summary_path = self.outputs
            terminalreporter.write_line(f"results: {json_path}")
            terminalreporter.write_line(f"summary: {summary_path}")
            terminalreporter.write_line(f"report: {self.html}")
        if self.write_error:
            terminalreporter.write_line(f"results not written: {self.write_error}", red=True)


def _resolved_weights(state) -> dict:
    """The checkpoint's record when this process's session has already resolved it (never resolves it
    here: that could train a tiny checkpoint after the run)."""
    weights = vars(state.session).get("weights") if state.session is not None else None
    return weights.to_dict() if weights is not None else {}


def _total_layers(state) -> int | None:
    """The checkpoint's decoder layer count when this process's session can tell (None otherwise)."""
    try:
        return state.session.full_layers if state.session is not None else None
    except Exception:  # noqa: BLE001 - a missing or broken checkpoint is reported by its own stage
        return None


def _message(report: pytest.TestReport) -> str:
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2]).removeprefix("Skipped: ")
    if report.failed:
        crash = getattr(report.longrepr, "reprcrash", None)
        return crash.message if crash is not None else str(report.longrepr)
    return ""


def _traceback(report: pytest.TestReport) -> str:
    """The full traceback of an unexpected error; a failed check's message stands on its own."""
    full = getattr(report, "autoport_traceback", "")
    if full:
        return full
    if report.failed and getattr(report.longrepr, "reprcrash", None) is not None:
        return str(report.longrepr)
    return ""
