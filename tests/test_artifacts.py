"""The compiled-artifact store: keys, build-once, atomicity, recovery, concurrency, purge and the CLI."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pytest_autoport import cli
from pytest_autoport.artifacts import (
    LOCKS_DIR,
    MANIFEST,
    OWNER_MARKER,
    READY,
    ArtifactStore,
    CompileFailed,
    artifact_key,
)
from pytest_autoport.errors import AutoportError

INPUTS = {
    "port_source": "abc123",
    "spec": {"model": "llama", "layers": 2},
    "target": "neuron",
    "dtype": "bfloat16",
    "buckets": [128, 256],
    "tp": 2,
    "compiler_flags": ["--auto-cast=none", "-O1"],
    "versions": {"torch": "2.8", "transformers": "4.57", "neuronx-cc": "2.21"},
}


def make_store(tmp_path: Path, **kwargs) -> ArtifactStore:
    return ArtifactStore(tmp_path / "compiled_model", tmp_path / "compilation_failures", **kwargs)


class CountingBuild:
    """A build that writes two files (one nested) and counts its calls."""

    def __init__(self, payload: bytes = b"neff-bytes" * 100):
        self.calls = 0
        self.payload = payload

    def __call__(self, out: Path) -> dict:
        self.calls += 1
        (out / "model.neff").write_bytes(self.payload)
        (out / "graphs").mkdir()
        (out / "graphs" / "decode.pb").write_text("graph")
        return {"compiler": "fake", "call": self.calls}


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --------------------------------------------------------------------------------------------------- keys


def test_key_is_sha256_of_sorted_json_and_stable():
    expected = hashlib.sha256(json.dumps(INPUTS, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[
        :16
    ]
    assert artifact_key(INPUTS) == expected
    reordered = dict(reversed(list(INPUTS.items())))
    assert artifact_key(reordered) == artifact_key(INPUTS)
    assert len(artifact_key({})) == 16


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.update(port_source="abc124"),
        lambda d: d["spec"].update(layers=3),
        lambda d: d.update(dtype="float32"),
        lambda d: d.update(buckets=[128, 512]),
        lambda d: d.update(buckets=[256, 128]),
        lambda d: d.update(tp=1),
        lambda d: d.update(tp="2"),
        lambda d: d.update(tp=2.5),
        lambda d: d["compiler_flags"].append("--enable-fast-loading"),
        lambda d: d["versions"].update(torch="2.9"),
        lambda d: d.update(extra=None),
        lambda d: d.pop("target"),
    ],
)
def test_any_input_change_changes_the_key(change):
    changed = json.loads(json.dumps(INPUTS))
    change(changed)
    assert artifact_key(changed) != artifact_key(INPUTS)


def test_key_accepts_paths_and_rejects_unstable_objects():
    assert artifact_key({"p": Path("/a/b")}) == artifact_key({"p": "/a/b"})
    with pytest.raises(TypeError, match="cannot hash"):
        artifact_key({"x": object()})


# --------------------------------------------------------------------------------------------------- build once


def test_builds_once_then_reuses(tmp_path):
    store = make_store(tmp_path)
    build = CountingBuild()
    first = store.get_or_build("llama", INPUTS, build)
    second = store.get_or_build("llama", INPUTS, build)

    assert build.calls == 1
    assert first.built is True and second.built is False
    assert first.path == second.path == store.root / f"llama-{artifact_key(INPUTS)}"
    assert first.recovered_from is None and second.recovered_from is None
    sealed = hashlib.sha256((first.path / MANIFEST).read_bytes()).hexdigest()
    assert (first.path / READY).read_text().strip() == sealed  # READY seals the manifest

    manifest = json.loads((first.path / MANIFEST).read_text())
    assert manifest == second.manifest
    assert manifest["name"] == "llama" and manifest["key"] == first.key
    assert manifest["key_inputs"] == INPUTS
    assert manifest["build"] == {"compiler": "fake", "call": 1}
    assert manifest["build_seconds"] >= 0 and manifest["created_at"]
    neff = first.path / "model.neff"
    assert manifest["files"] == {
        "graphs/decode.pb": {"sha256": hashlib.sha256(b"graph").hexdigest(), "size": 5},
        "model.neff": {"sha256": hashlib.sha256(neff.read_bytes()).hexdigest(), "size": neff.stat().st_size},
    }
    assert [s.state for s in store.entries()] == ["ready"]


def test_different_inputs_get_different_entries(tmp_path):
    store = make_store(tmp_path)
    build = CountingBuild()
    a = store.get_or_build("llama", INPUTS, build)
    b = store.get_or_build("llama", {**INPUTS, "tp": 4}, build)
    assert build.calls == 2 and a.path != b.path
    assert sorted(s.state for s in store.entries()) == ["ready", "ready"]


def test_entry_appears_only_when_complete(tmp_path):
    store = make_store(tmp_path)
    final = store.entry_path("llama", artifact_key(INPUTS))
    seen = {}

    def build(out: Path) -> dict:
        (out / "model.neff").write_bytes(b"x")
        seen["final_during_build"] = os.path.lexists(final)
        seen["tmp"] = out
        return {}

    store.get_or_build("llama", INPUTS, build)
    assert seen == {"final_during_build": False, "tmp": seen["tmp"]}
    assert seen["tmp"].parent == store.root and seen["tmp"].name.startswith(".tmp-llama-")
    assert not seen["tmp"].exists()
    assert not list(store.root.glob(".tmp-*"))


def test_rejects_names_that_are_not_folder_safe(tmp_path):
    with pytest.raises(ValueError):
        make_store(tmp_path).get_or_build("../evil", INPUTS, CountingBuild())


# --------------------------------------------------------------------------------------------------- failures


def test_failed_build_leaves_no_entry_and_keeps_its_logs(tmp_path):
    store = make_store(tmp_path)
    key = artifact_key(INPUTS)

    def build(out: Path) -> dict:
        (out / "compile.log").write_text("ERROR: unsupported op\n")
        (out / "graph_dump.pb").write_bytes(b"partial")
        raise RuntimeError("neuronx-cc exited with status 70")

    with pytest.raises(CompileFailed) as info:
        store.get_or_build("llama", INPUTS, build)

    error = info.value
    assert isinstance(error, AutoportError)
    assert isinstance(error.__cause__, RuntimeError)
    failure_dir = error.failure_dir
    assert failure_dir is not None and failure_dir.parent == store.failures_root
    assert failure_dir.name.startswith("llama_")
    assert str(failure_dir) in str(error) and "neuronx-cc exited with status 70" in str(error)
    assert (failure_dir / "compile.log").read_text() == "ERROR: unsupported op\n"
    assert (failure_dir / "graph_dump.pb").exists()
    assert "neuronx-cc exited with status 70" in (failure_dir / "autoport_failure.txt").read_text()

    assert not os.path.lexists(store.root / f"llama-{key}")
    assert not list(store.root.glob(".tmp-*"))
    states = store.entries()
    assert [(s.state, s.path) for s in states] == [("failed", failure_dir)]
    assert "neuronx-cc exited with status 70" in states[0].detail

    # the next call builds cleanly
    entry = store.get_or_build("llama", INPUTS, CountingBuild())
    assert entry.built and entry.path == store.root / f"llama-{key}"


def test_two_failures_in_one_second_keep_separate_folders(tmp_path):
    store = make_store(tmp_path)

    def build(out: Path) -> dict:
        raise ValueError("bad")

    dirs = set()
    for _ in range(2):
        with pytest.raises(CompileFailed) as info:
            store.get_or_build("llama", INPUTS, build)
        dirs.add(info.value.failure_dir)
    assert len(dirs) == 2 and all(d.is_dir() for d in dirs)


def test_build_must_return_a_dict(tmp_path):
    store = make_store(tmp_path)
    with pytest.raises(CompileFailed, match="must return a dict"):
        store.get_or_build("llama", INPUTS, lambda out: "oops")
    assert not list(store.root.glob("llama-*"))


def test_killed_compile_is_stale_lock_and_purged(tmp_path):
    store = make_store(tmp_path)
    key = artifact_key(INPUTS)
    pid = dead_pid()
    store.root.mkdir(parents=True)
    tmp = store.root / f".tmp-llama-{key}-{pid}-k1ll3d"
    tmp.mkdir()
    (tmp / OWNER_MARKER).write_text("{}")  # the store claims its temporary folders when it makes them
    (tmp / "model.hlo_module.pb").write_bytes(b"half")
    (store.root / LOCKS_DIR).mkdir()
    lock = store.lock_path("llama", key)
    lock.touch()
    lock.with_suffix(".pid").write_text(json.dumps({"pid": pid, "host": socket.gethostname()}))

    states = {s.path: s for s in store.entries()}
    assert set(states) == {tmp, lock}
    assert states[tmp].state == "stale-lock" and str(pid) in states[tmp].detail
    assert states[lock].state == "stale-lock" and "gone" in states[lock].detail
    assert states[tmp].size_bytes == 4 + 2  # the half-written graph and the marker

    assert {s.path for s in store.purge(dry_run=True)} == {tmp, lock}
    assert tmp.exists() and lock.exists()

    removed = store.purge()
    assert {s.path for s in removed} == {tmp, lock}
    assert not tmp.exists() and not lock.exists() and not lock.with_suffix(".pid").exists()
    assert store.entries() == []

    build = CountingBuild()
    entry = store.get_or_build("llama", INPUTS, build)
    assert entry.built and build.calls == 1
    assert [s.state for s in store.entries()] == ["ready"]


def test_stale_lock_does_not_block_the_next_build(tmp_path):
    store = make_store(tmp_path, lock_timeout=5)
    key = artifact_key(INPUTS)
    lock = store.lock_path("llama", key)
    lock.parent.mkdir(parents=True)
    lock.touch()
    lock.with_suffix(".pid").write_text(str(dead_pid()))
    entry = store.get_or_build("llama", INPUTS, CountingBuild())
    assert entry.built
    assert [s.state for s in store.entries()] == ["ready"]  # our own holder record was removed on release


def test_live_lock_and_running_build_are_not_purged(tmp_path):
    from filelock import FileLock

    store = make_store(tmp_path)
    key = artifact_key(INPUTS)
    lock_path = store.lock_path("llama", key)
    lock_path.parent.mkdir(parents=True)
    tmp = store.root / f".tmp-llama-{key}-{os.getpid()}-abc123"
    tmp.mkdir()
    (tmp / OWNER_MARKER).write_text("{}")
    (tmp / "partial.neff").write_bytes(b"x")
    with FileLock(str(lock_path)):
        states = {s.path: s.state for s in store.entries()}
        assert states == {lock_path: "locked", tmp: "locked"}
        assert store.purge() == []
        assert tmp.exists() and lock_path.exists()


def test_lock_timeout_names_the_holder(tmp_path):
    from filelock import FileLock

    store = make_store(tmp_path, lock_timeout=0.2)
    lock_path = store.lock_path("llama", artifact_key(INPUTS))
    lock_path.parent.mkdir(parents=True)
    with FileLock(str(lock_path)):
        with pytest.raises(AutoportError, match="timed out"):
            store.get_or_build("llama", INPUTS, CountingBuild())


# --------------------------------------------------------------------------------------------------- corruption


def _edit(entry_path: Path) -> str:
    neff = entry_path / "model.neff"
    data = bytearray(neff.read_bytes())
    data[0] ^= 0xFF
    neff.write_bytes(bytes(data))
    return "checksum mismatch for model.neff"


def _truncate(entry_path: Path) -> str:
    (entry_path / "model.neff").write_bytes(b"short")
    return "size mismatch for model.neff"


def _delete_file(entry_path: Path) -> str:
    (entry_path / "graphs" / "decode.pb").unlink()
    return "missing file graphs/decode.pb"


def _delete_manifest(entry_path: Path) -> str:
    (entry_path / MANIFEST).unlink()
    return "READY marker without manifest.json"


def _garble_manifest(entry_path: Path) -> str:
    (entry_path / MANIFEST).write_text("{not json")
    return "unreadable manifest.json"


def _delete_ready(entry_path: Path) -> str:
    (entry_path / READY).unlink()
    return "no READY marker"


CORRUPTIONS = [_edit, _truncate, _delete_file, _delete_manifest, _garble_manifest, _delete_ready]


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__.strip("_"))
def test_corrupt_entry_is_detected_rebuilt_once_and_reported(tmp_path, corrupt):
    store = make_store(tmp_path)
    build = CountingBuild()
    entry = store.get_or_build("llama", INPUTS, build)
    problem = corrupt(entry.path)

    [state] = store.entries()
    assert state.state == "corrupt" and problem in state.detail

    rebuilt = store.get_or_build("llama", INPUTS, build)
    assert build.calls == 2 and rebuilt.built
    assert rebuilt.recovered_from is not None and problem in rebuilt.recovered_from
    assert problem in rebuilt.manifest["rebuilt_after"]
    assert (
        json.loads((rebuilt.path / MANIFEST).read_text())["rebuilt_after"]
        == rebuilt.manifest["rebuilt_after"]
    )
    assert [s.state for s in store.entries()] == ["ready"]

    again = store.get_or_build("llama", INPUTS, build)
    assert build.calls == 2 and not again.built and again.recovered_from is None


@pytest.mark.parametrize(
    "corrupt", [_edit, _delete_manifest, _delete_file], ids=lambda f: f.__name__.strip("_")
)
def test_purge_removes_corrupt_entries(tmp_path, corrupt):
    store = make_store(tmp_path)
    entry = store.get_or_build("llama", INPUTS, CountingBuild())
    corrupt(entry.path)
    [removed] = store.purge()
    assert removed.state == "corrupt" and removed.path == entry.path
    assert not entry.path.exists()


def test_classification_and_dry_run(tmp_path):
    store = make_store(tmp_path)
    ready = store.get_or_build("llama", INPUTS, CountingBuild())
    empty = store.root / "qwen3-0123456789abcdef"
    empty.mkdir()
    failed = store.root / "mistral-fedcba9876543210"
    failed.mkdir()
    (failed / OWNER_MARKER).write_text("{}")
    (failed / "model.log").write_text("ERROR")
    with pytest.raises(CompileFailed):
        store.get_or_build("gemma", INPUTS, lambda out: 1 / 0)

    states = {s.path: s for s in store.entries()}
    assert {p: s.state for p, s in states.items() if p.parent == store.root} == {
        ready.path: "ready",
        empty: "empty",
        failed: "failed",
    }
    [kept] = [s for s in states.values() if s.path.parent == store.failures_root]
    assert kept.state == "failed" and kept.name == "gemma" and "ZeroDivisionError" in kept.detail
    assert states[ready.path].size_bytes > 1000 and states[ready.path].key == ready.key

    before = sorted(str(p) for p in tmp_path.rglob("*"))
    would = store.purge(dry_run=True)
    assert {s.state for s in would} == {"empty", "failed"} and len(would) == 3
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before

    removed = store.purge()
    assert {s.path for s in removed} == {s.path for s in would}
    assert [s.path for s in store.entries()] == [ready.path]
    assert (ready.path / "model.neff").exists()


# --------------------------------------------------------------------------------------------------- concurrency


def _race_worker(root: str, failures: str, counter: str, barrier, results) -> None:
    store = ArtifactStore(Path(root), Path(failures), lock_timeout=60)

    def slow_build(out: Path) -> dict:
        with open(counter, "a") as handle:
            handle.write(f"{os.getpid()}\n")
        time.sleep(1.0)
        (out / "model.neff").write_bytes(b"compiled")
        return {"builder": os.getpid()}

    barrier.wait(timeout=30)
    entry = store.get_or_build("llama", INPUTS, slow_build)
    results.put((str(entry.path), entry.built, entry.manifest["build"]["builder"]))


def test_two_processes_race_on_one_key_build_once(tmp_path):
    ctx = multiprocessing.get_context("fork")
    counter = tmp_path / "counter.txt"
    barrier = ctx.Barrier(2)
    results = ctx.Queue()
    args = (str(tmp_path / "store"), str(tmp_path / "failures"), str(counter), barrier, results)
    procs = [ctx.Process(target=_race_worker, args=args) for _ in range(2)]
    for proc in procs:
        proc.start()
    outcomes = [results.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
        assert proc.exitcode == 0

    assert len(counter.read_text().splitlines()) == 1
    assert len({path for path, _, _ in outcomes}) == 1
    assert sorted(built for _, built, _ in outcomes) == [False, True]
    assert len({builder for _, _, builder in outcomes}) == 1


def test_two_xdist_workers_race_on_one_key_build_once(pytester, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    pytester.makepyfile(
        test_race=textwrap.dedent(
            f"""
            import os
            import time
            from pathlib import Path

            import pytest

            from pytest_autoport.artifacts import ArtifactStore

            SHARED = Path({str(shared)!r})


            def slow_build(out):
                with open(SHARED / "counter.txt", "a") as handle:
                    handle.write(os.environ.get("PYTEST_XDIST_WORKER", "?") + "\\n")
                time.sleep(1.5)
                (out / "model.neff").write_bytes(b"compiled")
                return {{}}


            @pytest.mark.parametrize("i", [0, 1])
            def test_get(i):
                worker = os.environ["PYTEST_XDIST_WORKER"]
                (SHARED / f"arrived-{{worker}}").touch()
                deadline = time.time() + 60
                while len(list(SHARED.glob("arrived-*"))) < 2:  # start both at once
                    assert time.time() < deadline, "the other worker never arrived"
                    time.sleep(0.05)
                store = ArtifactStore(SHARED / "store", SHARED / "failures", lock_timeout=120)
                entry = store.get_or_build("tiny", {{"model": "tiny", "tp": 1}}, slow_build)
                assert (entry.path / "READY").exists()
                (SHARED / f"result-{{worker}}").write_text(f"{{entry.path}} {{entry.built}}")
            """
        )
    )
    result = pytester.runpytest_subprocess(
        "-n", "2", "-p", "xdist", "-p", "no:autoport", "-p", "no:cacheprovider"
    )
    result.assert_outcomes(passed=2)
    assert len((shared / "counter.txt").read_text().splitlines()) == 1
    outcomes = sorted(p.read_text() for p in shared.glob("result-*"))
    assert len(outcomes) == 2
    assert len({o.split()[0] for o in outcomes}) == 1
    assert sorted(o.split()[1] for o in outcomes) == ["False", "True"]


# --------------------------------------------------------------------------------------------------- CLI


@pytest.fixture
def clean_cache_only(monkeypatch):
    # other subcommands' modules belong to other parts of the harness; route only the one under test
    monkeypatch.setattr(cli, "COMMANDS", {"clean-cache": cli.COMMANDS["clean-cache"]})


def _populated(tmp_path: Path) -> ArtifactStore:
    store = make_store(tmp_path)
    store.get_or_build("llama", INPUTS, CountingBuild())
    (store.root / "qwen3-0123456789abcdef").mkdir()
    with pytest.raises(CompileFailed):
        store.get_or_build("gemma", INPUTS, lambda out: 1 / 0)
    return store


def test_cli_dry_run_prints_table_and_removes_nothing(tmp_path, capsys, clean_cache_only):
    store = _populated(tmp_path)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    rc = cli.main(
        ["clean-cache", "--dry-run", "--root", str(store.root), "--failures-root", str(store.failures_root)]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before
    lines = out.splitlines()
    assert lines[1].split() == ["STATE", "ENTRY", "SIZE", "DETAIL"]
    assert any(line.startswith("ready") and f"llama-{artifact_key(INPUTS)}" in line for line in lines)
    assert any(
        line.startswith("empty") and "qwen3-0123456789abcdef" in line and "[would remove]" in line
        for line in lines
    )
    assert any(
        line.startswith("failed") and "gemma_" in line and "ZeroDivisionError" in line for line in lines
    )
    assert lines[-1].startswith("3 entries: 1 ready, 1 failed, 1 empty; would remove 2 (")
    assert lines[-1].endswith("dry run, nothing removed")


def test_cli_purges_and_reports_json(tmp_path, capsys, clean_cache_only):
    store = _populated(tmp_path)
    args = ["clean-cache", "--root", str(store.root), "--failures-root", str(store.failures_root)]
    assert cli.main(args) == 0
    assert "removed 2" in capsys.readouterr().out.splitlines()[-1]
    assert cli.main([*args, "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert [e["state"] for e in payload["entries"]] == ["ready"]
    assert payload["removed"] == [] and payload["dry_run"] is False


def test_cli_on_missing_folders(tmp_path, capsys, clean_cache_only):
    rc = cli.main(
        ["clean-cache", "--root", str(tmp_path / "nope"), "--failures-root", str(tmp_path / "nope2")]
    )
    assert rc == 0
    assert "0 entries: nothing found; removed 0 (0 B freed)" in capsys.readouterr().out


def test_importing_the_module_stays_light():
    code = (
        "import sys, pytest_autoport.artifacts, pytest_autoport.neuron_cache;"
        "print(sorted(m for m in ('torch', 'filelock', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
