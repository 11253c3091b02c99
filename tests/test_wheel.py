"""The installed wheel ships the knowledge base (issue 14): built offline from a copy of the sources, it
holds every kb/ topic and every plugin module, and ``autoport kb search`` finds topics from a
non-editable install; a checkout reads kb/ at the repository root."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pytest_autoport import kb

REPO = Path(__file__).resolve().parents[1]
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-cache-dir"]


def _offline_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return dict(env, PIP_NO_INDEX="1")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    setuptools = pytest.importorskip("setuptools", reason="building the wheel offline needs setuptools")
    if tuple(int(p) for p in setuptools.__version__.split(".")[:2]) < (70, 1):
        pytest.skip(f"setuptools {setuptools.__version__} cannot build a wheel by itself (needs 70.1+)")
    src = tmp_path_factory.mktemp("src")  # a copy: the build writes build/ and *.egg-info beside the sources
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(
        REPO / "pytest_autoport", src / "pytest_autoport", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copytree(REPO / "kb", src / "kb")
    out = tmp_path_factory.mktemp("dist")
    built = subprocess.run(
        [*PIP, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src)],
        capture_output=True,
        text=True,
        env=_offline_env(),
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    return next(out.glob("pytest_autoport-*.whl"))


def test_a_checkout_reads_kb_at_the_repository_root():
    assert kb.KB_DIR == REPO / "kb"
    assert {t.file for t in kb.topics()} == {f"kb/{p.name}" for p in (REPO / "kb").glob("*.md")}


def test_the_wheel_holds_every_kb_topic_and_every_module(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    topics = {f"pytest_autoport/kb_topics/{p.name}" for p in (REPO / "kb").glob("*.md")}
    assert topics and topics <= names, sorted(topics - names)
    modules = {
        p.relative_to(REPO).as_posix()
        for p in (REPO / "pytest_autoport").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert modules <= names, (
        f"not in the wheel (list the package in pyproject.toml): {sorted(modules - names)}"
    )


def test_kb_search_works_from_a_non_editable_install(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)], check=True
    )
    python = venv / "bin" / "python"
    installed = subprocess.run(
        [*PIP, "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
        capture_output=True,
        text=True,
        env=_offline_env(),
        timeout=300,
    )
    assert installed.returncode == 0, installed.stderr[-2000:]
    run = subprocess.run(
        [str(venv / "bin" / "autoport"), "kb", "search", "sliding window"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_offline_env(),
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "kb/sliding_window.md" in run.stdout
    where = subprocess.run(
        [str(python), "-c", "from pytest_autoport import kb; print(kb.KB_DIR)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_offline_env(),
        check=True,
    )
    assert Path(where.stdout.strip()).is_relative_to(venv)
