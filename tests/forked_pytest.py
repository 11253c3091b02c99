"""Run pytest in a fresh process forked from one that has torch and transformers imported already.

A verdict in a new interpreter spends most of its first seconds importing torch, transformers and the
bundled models' modelling code; the suite starts about a hundred of them. A fork server (one per test
process) imports those once; each run is a fork of it that sets up the working folder, environment and
``sys.path`` a ``python -m pytest`` started there would have, so the run sees the project it is given
(its ``neuron_port`` copy, its planted bugs) and imports the harness afresh. What the fork server
imported is read once when it starts, and so is the harness's package check (the env stage's new
interpreter importing every package), made once per PYTHONPATH and PATH: runs that need an interpreter started with other settings
(another environment variable read at torch import, another Python) use a real subprocess.
A PYTHONPATH holding a ``sitecustomize`` makes that run a real subprocess, and
``AUTOPORT_TESTS_SUBPROCESS=1`` makes every run one.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import multiprocessing
import multiprocessing.forkserver
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

PRELOADED = ["fork_server_preload"]
REPO = Path(__file__).resolve().parents[1]


def import_model_modules(specs: Path = REPO / "port_specs") -> None:
    """Import torch.export's lazy modules, the transformers classes of every spec in port_specs/ and
    the tokenizer classes: what every verdict imports, and what must never be imported twice in one
    process (torch cannot register export's operators again; a second import of a transformers module
    makes classes that fail the first ones' isinstance checks). A spec that does not load is left out."""
    import torch
    import transformers

    from pytest_autoport.spec import SpecError, load_spec

    class Tiny(torch.nn.Module):
        def forward(self, x):
            return x + 1

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "tiny.pt2"
        torch.export.save(torch.export.export(Tiny(), (torch.ones(1),)), path)
        torch.export.load(path).module()(torch.ones(1))

    for spec_file in sorted(specs.glob("*.toml")):
        try:
            spec = load_spec(spec_file, specs.parent, check_imports=False)
        except SpecError:
            continue
        getattr(transformers, spec.model.hf_model_class, None)
        if spec.tiny.get("model_type"):
            transformers.AutoConfig.for_model(spec.tiny["model_type"])
    transformers.PreTrainedTokenizerFast, transformers.AutoTokenizer  # noqa: B018
    import safetensors.torch  # noqa: F401


def _fresh_interpreter_path() -> list[str]:
    """``sys.path`` of this interpreter started with no PYTHONPATH and no script: stdlib and site dirs."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-c", "import sys, json; print(json.dumps(sys.path[1:]))"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out)


_context = None
_base_path: list[str] = []


def _fork_server():
    global _context, _base_path
    if _context is None:
        _base_path = _fresh_interpreter_path()
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(PRELOADED)
        # the server imports its preload before it reads the path it is sent: it finds it on PYTHONPATH
        here = str(Path(__file__).parent)
        saved = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [here, saved]))
        try:
            multiprocessing.forkserver.ensure_running()
        finally:
            if saved is None:
                del os.environ["PYTHONPATH"]
            else:
                os.environ["PYTHONPATH"] = saved
        _context = context
    return _context


def _checked_packages() -> list[dict]:
    """The harness's package check (``envcheck.check_packages``: a new interpreter that imports torch,
    transformers and the Neuron packages, seconds long), made once per PYTHONPATH and PATH in this test
    process and handed to each forked run, which would otherwise start that interpreter again."""
    from pytest_autoport.envcheck import ALL_PACKAGES, check_packages

    key = (os.environ.get("PYTHONPATH", ""), os.environ.get("PATH", ""))
    if key not in _package_checks:
        statuses = check_packages(ALL_PACKAGES, refresh=True).values()
        _package_checks[key] = [dataclasses.asdict(status) for status in statuses]
    return _package_checks[key]


_package_checks: dict[tuple[str, str], list[dict]] = {}


def _remember_packages(packages: list[dict]) -> None:
    """Seed this run's package-check cache with the parent's ``packages`` (same environment)."""
    from pytest_autoport.package_probe import ALL_PACKAGES, PackageStatus, remember_packages

    statuses = {package["name"]: PackageStatus(**package) for package in packages}
    if tuple(statuses) == ALL_PACKAGES:  # another list of packages: the run checks them itself
        remember_packages(ALL_PACKAGES, statuses)


def _run_pytest(
    args: list[str], cwd: str, env: dict[str, str], path: list[str], out: str, err: str, packages: list[dict]
) -> None:
    stdout = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    stderr = os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    stdin = os.open(os.devnull, os.O_RDONLY)
    os.dup2(stdout, 1)
    os.dup2(stderr, 2)
    os.dup2(stdin, 0)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    sys.path[:] = path
    sys.argv = [str(Path(sys.executable).parent / "pytest"), *args]
    code = 1
    try:
        import pytest

        _remember_packages(packages)
        code = int(pytest.main(args))
    finally:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _customises_startup() -> bool:
    """Whether a new interpreter would run a ``sitecustomize`` found on PYTHONPATH (the real-NxDI tier
    installs its import stand-ins that way): a fork has started already and would skip it."""
    folders = filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))
    return any((Path(folder) / "sitecustomize.py").is_file() for folder in folders)


def runpytest(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """What ``pytester.runpytest_subprocess(*args)`` returns, run in a fork of the preloaded server."""
    if _wants_subprocess():
        return pytester.runpytest_subprocess(*args)
    for plugin in pytester.plugins:
        if not isinstance(plugin, str):
            raise ValueError(f"plugins of a forked run are named, not objects: {plugin}")
    return _forked(pytester.path, Path.cwd(), dict(os.environ), [*pytester.plugins], args)


def run_in(folder: Path, *args: str) -> pytest.RunResult:
    """``pytest *args`` run in ``folder`` outside any test, with the environment a pytester run has there
    (its HOME, no PYTEST_ADDOPTS, no colours): for runs shared by several tests. Its output is kept
    in ``folder/stdout`` and ``folder/stderr``."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "TOX_ENV_DIR")}
    env.update(HOME=str(folder), USERPROFILE=str(folder), PY_COLORS="0")
    if not _wants_subprocess():
        return _forked(folder, folder, env, [], args)
    from _pytest.pathlib import make_numbered_dir

    basetemp = make_numbered_dir(root=folder, prefix="runpytest-", mode=0o700)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(folder), env.get("PYTHONPATH", "")]))
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", f"--basetemp={basetemp}", *map(str, args)],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
    )
    (folder / "stdout").write_text(done.stdout)
    (folder / "stderr").write_text(done.stderr)
    return _result(
        done.returncode, done.stdout.splitlines(), done.stderr.splitlines(), time.monotonic() - start
    )


def _wants_subprocess() -> bool:
    return os.environ.get("AUTOPORT_TESTS_SUBPROCESS") == "1" or _customises_startup()


def _forked(folder: Path, cwd: Path, env: dict[str, str], plugins: list[str], args) -> pytest.RunResult:
    from _pytest.pathlib import make_numbered_dir

    context = _fork_server()
    basetemp = make_numbered_dir(root=folder, prefix="runpytest-", mode=0o700)
    # a plugin module the server imported (anyio's, through transformers) cannot be assertion-rewritten
    quiet = ["-W", "ignore::pytest.PytestAssertRewriteWarning"]
    argv = [f"--basetemp={basetemp}", *quiet, *map(str, args)]
    for plugin in plugins:
        argv[:0] = ["-p", plugin]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(cwd), env.get("PYTHONPATH", "")]))
    path = [str(cwd), *env["PYTHONPATH"].split(os.pathsep), *_base_path]
    out, err = folder / "stdout", folder / "stderr"
    start = time.monotonic()
    packages = _checked_packages()
    process = context.Process(
        target=_run_pytest, args=(argv, str(cwd), env, path, str(out), str(err), packages)
    )
    process.start()
    try:
        process.join()
    finally:
        if process.is_alive():  # the test was interrupted (Ctrl-C, pytest-timeout)
            process.kill()
    duration = time.monotonic() - start
    outlines = out.read_text(errors="replace").splitlines()
    errlines = err.read_text(errors="replace").splitlines()
    print("\n".join(outlines))
    print("\n".join(errlines), file=sys.stderr)
    return _result(process.exitcode, outlines, errlines, duration)


def _result(code: int, outlines: list[str], errlines: list[str], duration: float) -> pytest.RunResult:
    try:
        ret: int | pytest.ExitCode = pytest.ExitCode(code)
    except ValueError:
        ret = code
    return pytest.RunResult(ret, outlines, errlines, duration)
