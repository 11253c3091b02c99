"""The pytest plugin: options, one collector per spec, stage items, and the verdict report.

``pytest --autoport-model=llama`` collects ``port_specs/llama.toml`` as a file of stage items
(``env``, ``weights``, ``component[mlp-layer0]``, ..., ``golden``); ``-k``, ``-x``, ``--lf``,
junit-xml and xdist work on them as on any test.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import pytest

from .errors import FIGURES_ATTR, AutoportError, SpecError, StageFailure, TargetUnavailable
from .failure_hints import with_hints
from .results import FIGURE_PREFIX, NOT_RUN_HERE, SUPERSEDED
from .session import AutoportSession, Options
from .shared_steps import SharedStepFailed, running
from .spec import PortSpec, find_spec_file, load_spec
from .stage_limits import check_time_limit
from .time_spent import terminal_line
from .verdict_reporter import STAGE_KEY, VerdictReporter, stage_of

STATE = pytest.StashKey["AutoportState"]()


class AutoportState:
    """Per-process plugin state: the selected spec file, the session, stage outcomes, the verdict."""

    def __init__(self, config: pytest.Config, spec_path: Path):
        self.config = config
        self.spec_path = spec_path
        self.session: AutoportSession | None = None
        self.outcomes: dict[str, str] = {}  # stage id -> passed/failed/skipped
        self.planned: int | None = None  # stage items the spec plans, once collected
        self.errors_seen: dict[tuple[str, str], str] = {}  # (type, message) -> first stage id raising it
        self.memory_plan = None  # what each selected item holds (memory_plan.MemoryPlan), once collected

    @property
    def spec_nodeid(self) -> str:
        """The spec file's node id: its path from the rootdir, or its absolute path outside it
        (pytest would give a spec passed from outside the rootdir an empty one)."""
        try:
            return self.spec_path.relative_to(self.config.rootpath).as_posix()
        except ValueError:
            return self.spec_path.as_posix()

    def option(self, name):
        return self.config.getoption(name)

    @functools.cached_property
    def light_spec(self) -> PortSpec | None:
        """The spec parsed without importing the port (no torch): for names and settings, or None
        when it is invalid (collection then reports why)."""
        try:
            return load_spec(self.spec_path, self.config.rootpath, check_imports=False)
        except SpecError:
            return None

    def target_name(self) -> str:
        if self.option("autoport_target"):
            return self.option("autoport_target")
        return self.light_spec.port.target if self.light_spec else "?"

    @property
    def artifacts_dir(self) -> Path:
        chosen = self.option("autoport_artifacts")
        root = self.config.rootpath
        return Path(chosen).resolve() if chosen else root / "agent_artifacts"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("autoport", "pytest-autoport: staged verdicts for HF -> Neuron ports")
    group.addoption(
        "--autoport-model", metavar="NAME|PATH", help="port spec name in port_specs/ or path to a spec file"
    )
    group.addoption("--autoport-target", choices=("torch", "nxdi"), help="override the spec's target")
    group.addoption(
        "--autoport-artifacts", metavar="DIR", help="artifact folder (default: <rootdir>/agent_artifacts)"
    )
    group.addoption(
        "--autoport-dry-run",
        action="store_true",
        help="run only the stages that need no target; skip the rest",
    )
    group.addoption(
        "--autoport-dtype",
        choices=("float32", "bfloat16", "float16"),
        help="override port.dtype (compile dtype and low-precision checks; float32: FP32 checks only)",
    )
    group.addoption(
        "--autoport-compiler", choices=("export", "aoti"), help="torch target: override port.compiler"
    )
    group.addoption(
        "--autoport-golden-mode",
        choices=("token", "logit", "all"),
        default="token",
        help="golden gate: greedy token match (default), NxDI-style logit tolerances, or both",
    )
    group.addoption(
        "--autoport-logit-tolerance",
        choices=("calibrated", "nxdi"),
        default="calibrated",
        help="logit check in low precision: R per top-k slice against HF in the same dtype (default), "
        "or NxD Inference's fixed (atol, rtol) map",
    )
    group.addoption(
        "--autoport-regen-golden",
        action="store_true",
        help="recompute the HF golden (tokens and reference logits) and replace its cache entry in "
        "<artifacts>/golden/",
    )
    group.addoption(
        "--autoport-threads",
        type=int,
        metavar="N",
        help="torch CPU threads (default: 1 for a model up to 100M parameters, else torch's default; "
        "an OMP_NUM_THREADS set in the environment is kept; 0: torch's default)",
    )
    group.addoption(
        "--autoport-golden-streaming",
        action="store_true",
        help="golden: score with the FP32 HF model loaded one decoder layer at a time, and judge the "
        "port's own greedy trajectory instead of an HF free-running generation (models larger than memory)",
    )
    group.addoption(
        "--autoport-layers",
        type=int,
        metavar="N",
        help="judge only the first N decoder layers of the real checkpoint (reduced-layer mode, "
        "for quick iteration on big models; the HF golden is cut the same way)",
    )
    group.addoption(
        "--autoport-clean-cache",
        action="store_true",
        help="purge this spec's compiled artifacts (and failed/stale cache entries) before running",
    )


def pytest_configure(config: pytest.Config) -> None:
    name = config.getoption("autoport_model")
    if not name:
        return
    try:
        spec_path = find_spec_file(name, config.rootpath)
    except SpecError as exc:
        raise pytest.UsageError(str(exc)) from None
    state = AutoportState(config, spec_path.resolve())
    config.stash[STATE] = state
    config.pluginmanager.register(VerdictReporter(state), "autoport-verdict")
    if config.getoption("autoport_clean_cache") and not hasattr(config, "workerinput"):
        _clean_cache(state)
    if config.args_source == pytest.Config.ArgsSource.ARGS:
        config.args.append(str(spec_path))
    else:
        config.args[:] = [str(spec_path)]


def _clean_cache(state: AutoportState) -> None:
    """--autoport-clean-cache: drop this spec's compiled artifacts and every broken cache entry (golden
    cache entries included; a sound golden entry stays: --autoport-regen-golden replaces it). An entry a
    running verdict is using (or building) is skipped and said so; nothing the store did not make is touched."""
    import sys

    from .artifacts import GOLDEN_DIR, GOLDEN_FAILURES_DIR, ArtifactStore

    name = state.light_spec.name if state.light_spec else state.spec_path.stem
    data = state.artifacts_dir / "data"
    store = ArtifactStore(data / "compiled_model", data / "compilation_failures")
    for entry in store.entries():
        if entry.name == name and entry.state == "ready" and store.drop(entry) == "in use":
            print(f"autoport: kept {entry.path}: in use by another run", file=sys.stderr)
    store.purge()
    artifacts = state.artifacts_dir
    ArtifactStore(artifacts / GOLDEN_DIR, artifacts / GOLDEN_FAILURES_DIR).purge()  # broken entries only
    if state.target_name() == "nxdi":
        from .neuron_cache import purge_neuron_cache

        purge_neuron_cache()


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    state = config.stash.get(STATE, None)
    if state is None:
        return None
    from .envcheck import check_environment

    target = state.target_name()
    mode = ", dry run" if config.getoption("autoport_dry_run") else ""
    layers = config.getoption("autoport_layers")
    if layers is not None:
        mode += f", reduced-layer mode: the first {layers} decoder layers only"
    if target == "?":  # the spec does not load: collection names the field at fault
        return [f"autoport: spec {state.spec_path} does not load (the error follows){mode}"]
    return [
        f"autoport: spec {state.spec_path}, target {target}{mode}",
        *check_environment(target).summary_lines(),
    ]


def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    state = parent.config.stash.get(STATE, None)
    if state is not None and file_path.resolve() == state.spec_path:
        return SpecFile.from_parent(parent, path=file_path, nodeid=state.spec_nodeid)
    return None


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    state = config.stash.get(STATE, None)
    if state is None:
        return None
    from .xdist_scheduling import make_scheduler

    return make_scheduler(config, log, state.spec_nodeid)


def pytest_collection_finish(session: pytest.Session) -> None:
    state = session.config.stash.get(STATE, None)
    if state is None or state.session is None:
        return
    from .memory_plan import MemoryPlan

    selected = [i.planned for i in session.items if isinstance(i, StageItem)]
    state.memory_plan = MemoryPlan(state.session, [(p.id, p.stage.name, p.params) for p in selected])


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    full = getattr(item, "full_traceback", "")
    if full and call.excinfo is not None:
        report.autoport_traceback = full
    return report


class SpecFile(pytest.File):
    def collect(self):
        from .stages import plan, timeout_for

        state = self.config.stash[STATE]
        try:
            spec = _load_spec_for(self.path, state)
            options = Options(
                artifacts_dir=state.artifacts_dir,
                target=state.option("autoport_target"),
                dry_run=state.option("autoport_dry_run"),
                dtype=state.option("autoport_dtype"),
                compiler=state.option("autoport_compiler"),
                golden_mode=state.option("autoport_golden_mode"),
                logit_tolerance=state.option("autoport_logit_tolerance"),
                regen_golden=state.option("autoport_regen_golden"),
                threads=state.option("autoport_threads"),
                golden_streaming=bool(state.option("autoport_golden_streaming")),
                layers=state.option("autoport_layers"),
            )
            session = AutoportSession(spec, options)
            session.time_spent.announce = functools.partial(terminal_line, self.config)
            session.check_inputs()
            session.apply_threads()
            num_layers = session.hf_config.num_hidden_layers
            present = {(name, layer) for name, _, _, layer in session.module_paths}
        except AutoportError as exc:
            raise self.CollectError(str(exc)) from None
        state.session = session
        planned_stages = plan(session.spec, num_layers, session.lp_dtype_name, present, session.target_name)
        state.planned = len(planned_stages)
        for planned in planned_stages:
            # the id given as text: pytest reads "component[mlp-layer0]" in a cached --lf entry as name
            # "component" with parameters "mlp-layer0", and so must the item's own id, or --lf misses it
            item = StageItem.from_parent(
                self, name=planned.id, planned=planned, nodeid=f"{self.nodeid}::{planned.id}"
            )
            item.add_marker(pytest.mark.xdist_group(spec.name))
            item.add_marker(pytest.mark.timeout(timeout_for(planned.stage.name, spec)))
            yield item

    def repr_failure(self, excinfo):
        if isinstance(excinfo.value, (AutoportError, self.CollectError)):
            return str(excinfo.value)
        if self.config.getoption("tbstyle", "auto") in ("long", "native"):
            return super().repr_failure(excinfo)
        from .failure_text import short_failure

        return short_failure(excinfo.value, self.config.rootpath)


def _load_spec_for(path: Path, state: AutoportState) -> PortSpec:
    """The spec with its port imported; an nxdi port whose SDK is missing here is left unimported,
    so its stages skip with the target's reason instead of collection failing on the import."""
    try:
        return load_spec(path, state.config.rootpath)
    except SpecError:
        if state.target_name() != "nxdi":
            raise
        from .targets import get_target

        if get_target("nxdi").unavailable_reason() is None:
            raise
        return load_spec(path, state.config.rootpath, check_imports=False)


class StageItem(pytest.Item):
    def __init__(self, *, planned, **kwargs):
        super().__init__(**kwargs)
        self.planned = planned
        self.user_properties.append((STAGE_KEY, planned.id))
        self.full_traceback = ""

    @property
    def state(self) -> AutoportState:
        return self.config.stash[STATE]

    def runtest(self) -> None:
        session = self.state.session
        stage = self.planned.stage
        if session.options.dry_run and not stage.runs_in_dry_run(session):
            pytest.skip("dry run")
        if stage.needs_target:  # before the prerequisites: a stage this machine cannot run says so
            reason = session.target.unavailable_reason(stage.name)
            if reason:
                self._skip_unavailable(reason)
        for required in stage.requires:
            failed = [
                sid
                for sid, outcome in self.state.outcomes.items()
                if stage_of(sid) == required and outcome != "passed"
            ]
            if failed:
                pytest.skip(f"prerequisite stage {failed[0]} did not pass ({self.state.outcomes[failed[0]]})")
        running(session, self.planned.id)
        session.time_spent.item_running = True
        plan = self.state.memory_plan
        started = time.monotonic()
        try:
            if plan is not None:
                plan.before(self.planned.id)
            figures = stage.run(session, **self.planned.params)
            check_time_limit(self, time.monotonic() - started)
        except StageFailure as exc:
            exc = with_hints(exc, self.planned, self.state.session, self.state.outcomes)
            self._add_figures(exc.figures)
            raise exc from None
        except TargetUnavailable as exc:
            self._skip_unavailable(str(exc))
        except SharedStepFailed as exc:  # the item that ran the step shows its error
            pytest.skip(str(exc))
        except Exception as exc:
            self._add_figures(getattr(exc, FIGURES_ATTR, {}))
            raise
        finally:
            running(session, None)
            if plan is not None:
                plan.after(self.planned.id)
            session.time_spent.item_running = False
            self._add_figures(session.time_spent.take(self._credits_collection()))
        self._add_figures(figures or {})

    def _credits_collection(self) -> bool:
        """Whether this item is credited with what collection spent (see ``time_spent``)."""
        if self.planned.stage.name == "weights":
            return True
        return not any(
            getattr(i, "planned", None) and i.planned.stage.name == "weights" for i in self.session.items
        )

    def _skip_unavailable(self, reason: str) -> None:
        """Skip: the target cannot run this stage here. A stage skipped only for the missing
        NeuronCores is marked so (the verdict can then be "cpu-only" rather than failed)."""
        from .envcheck import DEVICE_RUNS_INSTEAD, NO_CORES_REASON

        if reason == NO_CORES_REASON:
            self._add_figures({NOT_RUN_HERE: "no NeuronCores"})
        elif reason == DEVICE_RUNS_INSTEAD:  # a CPU stand-in where the device stage itself runs
            self._add_figures({SUPERSEDED: reason})
        pytest.skip(reason)

    def _add_figures(self, figures: dict) -> None:
        for key, value in figures.items():
            self.user_properties.append((FIGURE_PREFIX + key, value))

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, AutoportError):
            return str(excinfo.value)
        full = super().repr_failure(excinfo, style="long")
        self.full_traceback = str(full)
        if self.config.getoption("tbstyle", "auto") in ("long", "native"):
            return super().repr_failure(excinfo, style=style)
        from .failure_text import headline, short_failure

        exc = excinfo.value
        first = self.state.errors_seen.setdefault((type(exc).__name__, str(exc)), self.planned.id)
        if first != self.planned.id:  # a shared step failing again: one line, not the same lines again
            return f"{headline(exc).splitlines()[0]} (same error as {first}, shown above)"
        return short_failure(exc, self.config.rootpath)

    def reportinfo(self):
        return self.path, None, f"{self.state.spec_path.stem}::{self.name}"


@pytest.fixture(scope="session")
def autoport_session(request) -> AutoportSession:
    """The run's shared state (HF reference, port, compiled artifact) for your own tests."""
    state = request.config.stash.get(STATE, None)
    if state is None or state.session is None:
        pytest.skip("no --autoport-model given")
    return state.session


@pytest.fixture(scope="session")
def autoport_spec(autoport_session) -> PortSpec:
    return autoport_session.spec


@pytest.fixture(scope="session")
def autoport_artifact_store(request):
    """The compiled-artifact store of this run: ``.entries()`` classifies, ``.purge()`` cleans."""
    from .artifacts import ArtifactStore

    state = request.config.stash.get(STATE, None)
    root = state.artifacts_dir if state else request.config.rootpath / "agent_artifacts"
    return ArtifactStore(root / "data" / "compiled_model", root / "data" / "compilation_failures")
