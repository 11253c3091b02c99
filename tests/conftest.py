"""Fixtures for the harness's own tests: a copy of the bundled Llama port in a pytester folder,
with an optional planted bug, and one shared tiny checkpoint so no test materialises its own."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from pathlib import Path

import forked_pytest
import pytest
from filelock import FileLock

REPO = Path(__file__).resolve().parents[1]

# name -> (file inside neuron_port/, or blocks/ for the harness's building blocks, text in the correct
# port, text with the bug)
PLANTED_BUGS = {
    "rope_theta": (
        "llama/modeling_llama.py",
        "theta, scaling = rope_parameters(config)",
        "theta, scaling = 10000.0, None",
    ),
    "rope_scaling_dropped": (  # the base kept, Llama 3's frequency scaling left out
        "llama/modeling_llama.py",
        "theta, scaling = rope_parameters(config)",
        "theta, scaling = rope_parameters(config)[0], None",
    ),
    "swapped_gate_up": (
        "llama/modeling_llama.py",
        "F.silu(self.gate_proj(x)) * self.up_proj(x)",
        "F.silu(self.up_proj(x)) * self.gate_proj(x)",
    ),
    "missing_residual": (
        "llama/modeling_llama.py",
        "return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))",
        "return self.mlp(self.post_attention_layernorm(hidden_states))",
    ),
    "wrong_weight_key": (
        "llama/modeling_llama.py",
        "        return converted\n",
        '        converted["model.layers.0.self_attn.q_proj.weight"] = state_dict["model.layers.1.self_attn.q_proj.weight"]\n'
        "        return converted\n",
    ),
    "layernorm_for_rmsnorm": (
        "blocks/norms.py",
        "x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)",
        "x = (x - x.mean(-1, keepdim=True)) * torch.rsqrt(x.var(-1, keepdim=True, unbiased=False) + self.eps)",
    ),
}


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory):
    """``tiny_weights(spec_name) -> folder``: each bundled spec's tiny checkpoint, made once per test run."""
    from pytest_autoport.checkpoint import resolve_weights
    from pytest_autoport.spec import load_spec

    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            spec = load_spec(REPO / "port_specs" / f"{name}.toml", REPO, check_imports=False)
            # shared by the xdist workers of one run; resolve_weights locks, so one of them builds it
            folder = tmp_path_factory.getbasetemp().parent / "autoport-weights" / name
            spec = dataclasses.replace(spec, model=dataclasses.replace(spec.model, weights_path=str(folder)))
            made[name] = resolve_weights(spec).path
        return made[name]

    return get


class PortProject:
    """A throwaway project folder holding the bundled ports and one spec, for running the plugin
    with pytester. Bugs are planted by replacing a snippet of port source."""

    def __init__(self, pytester: pytest.Pytester, name: str, weights: Path):
        self.pytester = pytester
        self.name = name
        self.root = pytester.path
        self.spec = _write_project(self.root, name, weights)
        self.blocks = self.root / "planted_blocks"

    def copy_compiled(self, run: SharedVerdict) -> None:
        """Start with the compiled artifacts a shared verdict built. Their keys cover every input of a
        build, so a run here reuses one only while nothing it was built from differs."""
        shutil.copytree(
            run.root / COMPILED,
            self.root / COMPILED,
            ignore=shutil.ignore_patterns(".locks", ".tmp-*"),
            dirs_exist_ok=True,
        )

    def plant(self, bug: str) -> None:
        self.replace(*PLANTED_BUGS[bug], what=bug)

    def source_path(self, file: str) -> Path:
        """The editable copy of ``neuron_port/<file>``, or of ``blocks/<file>`` (see ``replace``)."""
        if not file.startswith("blocks/"):
            return self.root / "neuron_port" / file
        if not self.blocks.exists():
            shutil.copytree(
                REPO / "pytest_autoport" / "blocks",
                self.blocks,
                ignore=shutil.ignore_patterns("__pycache__", "__init__.py"),
            )
        return self.blocks / file.removeprefix("blocks/")

    def replace(self, file: str, correct: str, buggy: str, what: str = "planted bug") -> None:
        """Replace ``correct`` by ``buggy`` in ``neuron_port/<file>``; a ``blocks/<file>`` is edited in
        a copy of the building blocks that shadows the installed ones in this project's runs only
        (``AUTOPORT_BLOCKS_PATH``)."""
        path = self.source_path(file)
        text = path.read_text()
        assert correct in text, f"{what}: the text to replace is no longer in {file}"
        path.write_text(text.replace(correct, buggy, 1))

    def edit_spec(self, old: str, new: str) -> None:
        text = self.spec.read_text()
        assert old in text
        self.spec.write_text(text.replace(old, new, 1))

    def run(self, *args: str) -> pytest.RunResult:
        """The verdict in a fresh process (forked from one with torch and transformers loaded):
        in-process runs would unload the transformers and port modules they imported, and classes
        re-imported later no longer match the ones in use."""
        with pytest.MonkeyPatch.context() as env:
            if self.blocks.exists():
                env.setenv("AUTOPORT_BLOCKS_PATH", str(self.blocks))
            return forked_pytest.runpytest(
                self.pytester, f"--autoport-model={self.name}", "-p", "no:cacheprovider", *args
            )

    def results(self) -> dict:
        """The verdict the last run wrote: ``<name>.json``, or ``<name>.partial.json`` after a run
        that selected some stages (-k, --lf) or a dry run."""
        folder = self.root / "agent_artifacts" / "results"
        written = [
            p for p in (folder / f"{self.name}.json", folder / f"{self.name}.partial.json") if p.exists()
        ]
        return json.loads(max(written, key=lambda p: p.stat().st_mtime_ns).read_text())

    def stage(self, stage_id: str) -> dict:
        return next(s for s in self.results()["stages"] if s["id"] == stage_id)

    def statuses(self) -> dict[str, str]:
        return {s["id"]: s["status"] for s in self.results()["stages"]}

    def assert_failing_exactly(self, expected) -> None:
        """The stages that failed are exactly ``expected`` (stage ids): a harness that failed more of
        them, or every one, does not pass."""
        failed = sorted(sid for sid, status in self.statuses().items() if status == "failed")
        assert failed == sorted(expected), f"failed stages {failed}, expected {sorted(expected)}"
        for sid in failed:  # and each failing component's message names it
            if sid.startswith("component["):
                component = re.sub(r"-(bfloat16|float16)$", "", sid.removeprefix("component[")[:-1])
                assert _where(component) in self.stage(sid)["message"], sid

    def assert_passes_every_stage(self, result: pytest.RunResult, components: list[str]) -> dict:
        """The whole verdict ran in stage order, with each of ``components`` (``mlp-layer0``) checked
        in FP32 then bf16, and every stage passed; returns the figures by stage id."""
        stage_ids = (
            ["env", "preflight", "hygiene", "weights"]
            + [f"component[{c}]" for c in components]
            + [f"component[{c}-bfloat16]" for c in components]
            + ["model", "model[bfloat16]", "compile", "generate", "golden"]
        )
        result.assert_outcomes(passed=len(stage_ids))
        assert result.ret == 0
        data = self.results()
        assert data["passed"] is True
        assert [s["id"] for s in data["stages"]] == stage_ids
        figures = {s["id"]: s["figures"] for s in data["stages"]}
        assert figures["golden"]["token_match"] >= 0.95
        assert "crossed_tensors" not in figures["weights"]
        return figures

    def assert_caught(
        self,
        result: pytest.RunResult,
        failing: tuple[str, ...],
        passing: tuple[str, ...] = (),
        first_divergent: str | tuple[str, ...] | None = None,
        failing_exactly: tuple[str, ...] | None = None,
    ) -> dict[str, str]:
        """A planted bug's verdict: weights pass; each ``failing`` component (``attention-layer0``)
        fails with a message naming it; each ``passing`` one still passes; the model check fails,
        naming ``first_divergent`` (one module, or any of several); compile, generate and golden skip;
        no traceback. ``failing_exactly``: every stage id that fails (see ``assert_failing_exactly``).
        Returns the statuses."""
        assert result.ret == 1
        if failing_exactly is not None:
            self.assert_failing_exactly(failing_exactly)
        statuses = self.statuses()
        assert statuses["weights"] == "passed"
        for component in failing:
            assert statuses[f"component[{component}]"] == "failed", component
            assert f"{_where(component)} differs" in self.stage(f"component[{component}]")["message"]
        for component in passing:
            assert statuses[f"component[{component}]"] == "passed", component
        model = self.stage("model")
        assert model["status"] == "failed"
        if first_divergent is not None:
            expected = (first_divergent,) if isinstance(first_divergent, str) else first_divergent
            assert model["figures"]["first_divergence"] in expected
            assert f"first divergent module: {model['figures']['first_divergence']}" in model["message"]
        for downstream in ("compile", "generate", "golden"):
            assert statuses[downstream] == "skipped"
        assert "Traceback" not in result.stdout.str()
        return statuses


COMPILED = Path("agent_artifacts", "data", "compiled_model")


def _write_project(root: Path, name: str, weights: Path) -> Path:
    """The bundled ports and spec ``name`` (reading ``weights``) under ``root``; returns the spec."""
    shutil.copytree(REPO / "neuron_port", root / "neuron_port", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "port_specs").mkdir()
    spec_text = (REPO / "port_specs" / f"{name}.toml").read_text()
    spec_text = re.sub(r'weights_path = ".*"', f'weights_path = "{weights}"', spec_text)
    spec = root / "port_specs" / f"{name}.toml"
    spec.write_text(spec_text)
    return spec


class SharedVerdict:
    """A verdict of an unmodified bundled port, run once per test run and read by several tests:
    ``result`` (its exit code and terminal output), ``results()``, ``stage()``, ``statuses()``.
    Its folder is shared: a test that edits or reruns anything uses its own ``PortProject``."""

    def __init__(self, root: Path, name: str, result: pytest.RunResult):
        self.root, self.name, self.result = root, name, result

    results = PortProject.results
    stage = PortProject.stage
    statuses = PortProject.statuses
    assert_passes_every_stage = PortProject.assert_passes_every_stage


def shared_verdict(
    tmp_path_factory, what: str, name: str, weights: Path, *args: str, spec_edits: tuple = ()
) -> SharedVerdict:
    """The verdict ``pytest --autoport-model=<name> *args`` of the unmodified port (its spec with each
    ``(old, new)`` of ``spec_edits`` replaced), run by the first test process of this test run that
    asks for ``what`` and read by the others (xdist workers too)."""
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    base = tmp_path_factory.getbasetemp()
    folder = (base.parent / f"autoport-shared-{run_id}" if run_id else base / "autoport-shared") / what
    folder.parent.mkdir(parents=True, exist_ok=True)
    exit_code = folder / "exit_code"
    with FileLock(f"{folder}.lock"):
        if not exit_code.exists():
            if folder.exists():  # a run that broke off
                shutil.rmtree(folder)
            folder.mkdir()
            spec = _write_project(folder, name, weights)
            for old, new in spec_edits:
                assert old in spec.read_text(), f"{what}: {old!r} is no longer in the {name} spec"
                spec.write_text(spec.read_text().replace(old, new, 1))
            with pytest.MonkeyPatch.context() as env:  # the installed blocks, whichever test asked first
                env.delenv("AUTOPORT_BLOCKS_PATH", raising=False)
                args = (f"--autoport-model={name}", "-p", "no:cacheprovider", *args)
                result = forked_pytest.run_in(folder, *args)
            exit_code.write_text(str(int(result.ret)))
    lines = {part: (folder / part).read_text(errors="replace").splitlines() for part in ("stdout", "stderr")}
    result = pytest.RunResult(int(exit_code.read_text()), lines["stdout"], lines["stderr"], 0.0)
    return SharedVerdict(folder, name, result)


@pytest.fixture(scope="session")
def llama_verdict(tmp_path_factory, tiny_weights) -> SharedVerdict:
    """The full verdict of the unmodified bundled Llama port, golden checked in every mode, with a
    JUnit report (``report.xml``): run once, for the tests that only read it."""
    weights = tiny_weights("llama")
    args = ("--autoport-golden-mode=all", "--junitxml=report.xml")
    return shared_verdict(tmp_path_factory, "llama-verdict", "llama", weights, *args)


ONE_BUCKET_EACH = (
    ("context_buckets = [16, 32, 64]", "context_buckets = [64]"),
    ("token_generation_buckets = [32, 64]", "token_generation_buckets = [64]"),
)


@pytest.fixture(scope="session")
def llama_aoti_verdict(tmp_path_factory, tiny_weights) -> SharedVerdict:
    """compile, generate and golden of the unmodified bundled Llama port compiled by AOTInductor, one
    bucket of each kind (``ONE_BUCKET_EACH``): one native build, read by the tests of the run and of
    its graphs."""
    weights = tiny_weights("llama")
    args = ("-k", "compile or generate or golden", "--autoport-compiler=aoti", "--autoport-dtype=float32")
    return shared_verdict(tmp_path_factory, "llama-aoti", "llama", weights, *args, spec_edits=ONE_BUCKET_EACH)


@pytest.fixture(scope="session")
def llama_dry_run(tmp_path_factory, tiny_weights) -> SharedVerdict:
    """``--autoport-dry-run`` of the unmodified bundled Llama port, run once for the tests that read it."""
    weights = tiny_weights("llama")
    return shared_verdict(tmp_path_factory, "llama-dry-run", "llama", weights, "--autoport-dry-run")


@pytest.fixture
def compiled_port_project(port_project, llama_verdict) -> PortProject:
    """``port_project`` holding the compiled artifacts of ``llama_verdict`` (whose compile figures
    are the first build's)."""
    port_project.copy_compiled(llama_verdict)
    return port_project


def _where(component: str) -> str:
    """How stage messages name a component id: ``mlp-layer0`` -> ``mlp (layer 0)``."""
    name, _, layer = component.partition("-layer")
    return f"{name} (layer {layer})" if layer else name


@pytest.fixture(scope="session", autouse=True)
def _heavy_modules_loaded():
    """Import, once per test process, the modules that must never be imported twice
    (``forked_pytest.import_model_modules``): ``pytester`` restores ``sys.modules`` after each test,
    and the contract tests' stand-in does too, so anything first imported inside such a test would be
    dropped and imported again later."""
    forked_pytest.import_model_modules()


@pytest.fixture
def make_project(pytester, tiny_weights):
    """``make_project(spec_name) -> PortProject`` for any bundled spec."""
    return lambda name: PortProject(pytester, name, tiny_weights(name))


@pytest.fixture
def port_project(make_project) -> PortProject:
    return make_project("llama")
