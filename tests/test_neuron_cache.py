"""Classification and purge of the Neuron persistent compile cache, on fake cache trees."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_autoport import cli, neuron_cache
from pytest_autoport.neuron_cache import (
    DEFAULT_NEURON_CACHE,
    CompilerRunning,
    NeuronCacheUnsupported,
    classify_neuron_cache,
    compiler_running,
    neuron_cache_dir,
    purge_neuron_cache,
)

VERSION = "neuronxcc-2.21.33363.0+82129205"


def module(cache: Path, name: str, files: dict[str, bytes | str]) -> Path:
    folder = cache / VERSION / f"MODULE_{name}+e30acd3a"
    folder.mkdir(parents=True)
    for rel, content in files.items():
        data = content.encode() if isinstance(content, str) else content
        (folder / rel).write_bytes(data)
    return folder


@pytest.fixture
def cache(tmp_path, monkeypatch) -> dict[str, Path]:
    root = tmp_path / "neuron-compile-cache"
    monkeypatch.setenv("NEURON_COMPILE_CACHE_URL", str(root))
    monkeypatch.setattr(neuron_cache, "compiler_running", lambda: False)
    return {
        "root": root,
        "ready": module(
            root,
            "1111",
            {"model.neff": b"\0" * 2048, "model.done": "", "model.hlo_module.pb": b"hlo", "model.log": "ok"},
        ),
        "failed": module(
            root,
            "2222",
            {
                "model.hlo_module.pb": b"hlo",
                "model.log": "compiling\nERROR 70: unsupported op Foo\n",
                "model.done": "",
            },
        ),
        "empty": module(root, "3333", {}),
        "locked": module(root, "4444", {"model.hlo_module.pb": b"hlo", "model.hlo_module.pb.lock": ""}),
        "half": module(root, "5555", {"model.neff": b"partial", "model.hlo_module.pb": b"hlo"}),
    }


def test_cache_dir_from_env(monkeypatch, tmp_path):
    monkeypatch.delenv("NEURON_COMPILE_CACHE_URL", raising=False)
    assert neuron_cache_dir() == DEFAULT_NEURON_CACHE == Path("/var/tmp/neuron-compile-cache")
    monkeypatch.setenv("NEURON_COMPILE_CACHE_URL", str(tmp_path))
    assert neuron_cache_dir() == tmp_path
    monkeypatch.setenv("NEURON_COMPILE_CACHE_URL", f"file://{tmp_path}")
    assert neuron_cache_dir() == tmp_path


def test_s3_cache_is_reported_unsupported_and_untouched(monkeypatch):
    monkeypatch.setenv("NEURON_COMPILE_CACHE_URL", "s3://bucket/neuron-cache")
    with pytest.raises(NeuronCacheUnsupported, match="s3://bucket/neuron-cache"):
        classify_neuron_cache()
    with pytest.raises(NeuronCacheUnsupported):
        purge_neuron_cache()


def test_classifies_module_folders(cache):
    states = {s.path: s for s in classify_neuron_cache()}
    assert {p: s.state for p, s in states.items()} == {
        cache["ready"]: "ready",
        cache["failed"]: "failed",
        cache["empty"]: "empty",
        cache["locked"]: "locked",
        cache["half"]: "corrupt",
    }
    assert "ERROR 70: unsupported op Foo" in states[cache["failed"]].detail
    assert states[cache["ready"]].size_bytes == 2048 + 3 + 2
    assert states[cache["ready"]].name == f"{VERSION}/MODULE_1111+e30acd3a"
    assert states[cache["ready"]].key == "1111+e30acd3a"


def test_purge_removes_failed_empty_corrupt_only(cache):
    would = purge_neuron_cache(dry_run=True)
    assert {s.path for s in would} == {cache["failed"], cache["empty"], cache["half"]}
    assert all(cache[k].exists() for k in ("ready", "failed", "empty", "locked", "half"))

    removed = purge_neuron_cache()
    assert {s.path for s in removed} == {s.path for s in would}
    assert cache["ready"].exists() and cache["locked"].exists()
    assert not any(cache[k].exists() for k in ("failed", "empty", "half"))
    assert {s.state for s in classify_neuron_cache()} == {"ready", "locked"}


def test_purge_refuses_while_compiler_runs(cache, monkeypatch):
    monkeypatch.setattr(neuron_cache, "compiler_running", lambda: True)
    with pytest.raises(CompilerRunning, match="neuronx-cc is running"):
        purge_neuron_cache()
    assert all(cache[k].exists() for k in ("ready", "failed", "empty", "locked", "half"))
    assert len(purge_neuron_cache(dry_run=True)) == 3  # a dry run only reads


def test_old_lock_without_compiler_is_stale(cache):
    lock = cache["locked"] / "model.hlo_module.pb.lock"
    old = time.time() - 3 * 3600
    os.utime(lock, (old, old))
    [state] = [s for s in classify_neuron_cache() if s.path == cache["locked"]]
    assert state.state == "stale-lock"
    assert cache["locked"] in {s.path for s in purge_neuron_cache()}


def test_old_lock_while_compiler_runs_stays_locked(cache, monkeypatch):
    lock = cache["locked"] / "model.hlo_module.pb.lock"
    old = time.time() - 3 * 3600
    os.utime(lock, (old, old))
    monkeypatch.setattr(neuron_cache, "compiler_running", lambda: True)
    [state] = [s for s in classify_neuron_cache() if s.path == cache["locked"]]
    assert state.state == "locked"


def test_missing_cache_is_empty(tmp_path, monkeypatch):
    monkeypatch.setenv("NEURON_COMPILE_CACHE_URL", str(tmp_path / "absent"))
    assert classify_neuron_cache() == []
    monkeypatch.setattr(neuron_cache, "compiler_running", lambda: False)
    assert purge_neuron_cache() == []


def test_compiler_detection_reads_proc(monkeypatch):
    assert neuron_cache._is_compiler(["/usr/bin/python3", "/opt/venv/bin/neuronx-cc", "compile", "x.pb"])
    assert neuron_cache._is_compiler(["neuronx-cc", "compile"])
    assert not neuron_cache._is_compiler(["/usr/bin/python3", "-m", "pytest"])


def test_compiler_scan_finds_a_running_neuronx_cc(tmp_path):
    """The real /proc scan: a process started as ``python .../neuronx-cc compile`` is found while it
    runs and gone once it has exited."""
    script = tmp_path / "neuronx-cc"
    script.write_text("import sys, time\nprint('up', flush=True)\ntime.sleep(60)\n")
    compiler = subprocess.Popen(
        [sys.executable, str(script), "compile", "model.hlo_module.pb"], stdout=subprocess.PIPE
    )
    try:
        assert compiler.stdout.readline() == b"up\n"  # the interpreter has set its argv
        assert compiler.pid in neuron_cache.compiler_pids()
        assert compiler_running() is True
    finally:
        compiler.kill()
        compiler.wait()
        compiler.stdout.close()
    assert compiler.pid not in neuron_cache.compiler_pids()


@pytest.fixture
def clean_cache_only(monkeypatch):
    monkeypatch.setattr(cli, "COMMANDS", {"clean-cache": cli.COMMANDS["clean-cache"]})


def test_cli_with_neuron_cache(cache, tmp_path, capsys, clean_cache_only):
    args = ["clean-cache", "--root", str(tmp_path / "store"), "--failures-root", str(tmp_path / "fail")]
    assert cli.main([*args, "--neuron-cache", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"Neuron compile cache: {cache['root']}" in out
    assert any(
        line.startswith("failed") and "MODULE_2222" in line and "[would remove]" in line
        for line in out.splitlines()
    )
    assert "would remove 3" in out.splitlines()[-1]
    assert cache["failed"].exists()

    assert cli.main([*args, "--neuron-cache", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert len(payload["neuron_cache"]["removed"]) == 3
    assert not cache["failed"].exists() and cache["ready"].exists()


def test_cli_reports_refusal_and_s3(cache, tmp_path, capsys, monkeypatch, clean_cache_only):
    args = [
        "clean-cache",
        "--root",
        str(tmp_path / "store"),
        "--failures-root",
        str(tmp_path / "fail"),
        "--neuron-cache",
    ]
    monkeypatch.setattr(neuron_cache, "compiler_running", lambda: True)
    assert cli.main(args) == 1
    assert "neuronx-cc is running" in capsys.readouterr().out
    assert cache["failed"].exists()

    monkeypatch.setenv("NEURON_COMPILE_CACHE_URL", "s3://bucket/cache")
    assert cli.main(args) == 1
    assert "not a local path" in capsys.readouterr().out
