"""Issue 11 part A: the harness deletes only what it made and can prove it made; caches follow content.

Each test reproduces one reported case: a spec or a command line pointing at a user's folder, a cleaner
racing a running verdict, a replaced checkpoint or a tampered manifest reusing stale graphs, and rebuilds
that happened silently.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from pytest_autoport import cli
from pytest_autoport.artifacts import (
    MANIFEST,
    OWNER_MARKER,
    ArtifactStore,
    RebuildWarning,
    artifact_key,
)
from pytest_autoport.checkpoint import TINY_MARKER, resolve_weights
from pytest_autoport.errors import SpecError
from pytest_autoport.spec import load_spec

REPO = Path(__file__).resolve().parents[2]
INPUTS = {"port_source": "abc", "target": "torch", "dtype": "float32"}


def tiny_spec(folder: Path, name: str = "llama", **tiny):
    """The bundled llama spec with its weights in ``folder`` (random tiny weights: quick to make)."""
    spec = load_spec(REPO / "port_specs" / "llama.toml", REPO, check_imports=False)
    model = dataclasses.replace(spec.model, weights_path=str(folder), name=name)
    return dataclasses.replace(spec, model=model, tiny={**spec.tiny, "weights": "random", **tiny})


def user_files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def make_store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "compiled_model", tmp_path / "compilation_failures")


def build(out: Path) -> dict:
    (out / "model.pt2").write_bytes(b"graph" * 50)
    return {"graphs": ["model.pt2"]}


# --------------------------------------------------------------------------------------------------- weights


@pytest.mark.parametrize("weights_path", ["", "  ", ".", "/", "~", "..", "{root}"])
def test_empty_or_root_like_weights_path_is_a_spec_error(tmp_path, weights_path):
    project = tmp_path / "project"
    (project / "port_specs").mkdir(parents=True)
    text = (REPO / "port_specs" / "llama.toml").read_text()
    line = f'weights_path = "{weights_path.format(root=project)}"'
    spec_file = project / "port_specs" / "llama.toml"
    spec_file.write_text(text.replace('weights_path = "agent_artifacts/data/llama"', line))
    with pytest.raises(SpecError) as info:
        load_spec(spec_file, project, check_imports=False)
    assert info.value.field == "model.weights_path"


def test_a_folder_the_harness_did_not_make_is_never_replaced(tmp_path):
    folder = tmp_path / "my_model"
    folder.mkdir()
    (folder / "MY_NOTES.txt").write_text("do not lose")
    (folder / "consolidated.00.pth").write_bytes(b"\x80\x04weights")
    before = user_files(folder)
    with pytest.raises(SpecError) as info:
        resolve_weights(tiny_spec(folder))
    assert info.value.field == "model.weights_path"
    assert "MY_NOTES.txt" in str(info.value) and "left alone" in str(info.value)
    assert user_files(folder) == before


def test_an_empty_folder_takes_the_tiny_checkpoint(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    weights = resolve_weights(tiny_spec(folder))
    assert weights.kind == "tiny-random" and (folder / TINY_MARKER).is_file()
    assert json.loads((folder / TINY_MARKER).read_text())["spec"]["name"] == "llama"


def test_two_specs_with_different_recipes_on_one_folder_are_refused(tmp_path):
    folder = tmp_path / "shared"
    resolve_weights(tiny_spec(folder, name="llama_a"))
    before = user_files(folder)
    with pytest.raises(SpecError) as info:
        resolve_weights(tiny_spec(folder, name="llama_b", seed=7))
    assert "'llama_a'" in str(info.value) and "'llama_b'" in str(info.value)
    assert user_files(folder) == before
    # the same spec with a changed recipe still rebuilds, and a second spec with the same recipe shares it
    assert resolve_weights(tiny_spec(folder, name="llama_a", seed=7)).kind == "tiny-random"
    assert resolve_weights(tiny_spec(folder, name="llama_b", seed=7)).rebuilt_after is None


def test_rebuilt_tiny_checkpoint_is_reported(tmp_path):
    spec = tiny_spec(tmp_path / "w")
    weights_file = resolve_weights(spec).path / "model.safetensors"
    weights_file.write_bytes(weights_file.read_bytes()[:-8] + bytes(8))
    with pytest.warns(RebuildWarning, match="checksum mismatch in model.safetensors"):
        assert resolve_weights(spec).rebuilt_after == "checksum mismatch in model.safetensors"


# --------------------------------------------------------------------------------------------------- clean-cache


@pytest.fixture
def clean_cache_only(monkeypatch):
    monkeypatch.setattr(cli, "COMMANDS", {"clean-cache": cli.COMMANDS["clean-cache"]})


def fake_home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text("secret")
    (home / "Documents").mkdir()
    (home / "Documents" / "thesis.tex").write_text("chapter 1")
    (home / "Downloads").mkdir()  # empty: still not the store's
    (home / ".bashrc").write_text("alias ll='ls -l'")
    (home / "photos-0123456789abcdef").mkdir()  # named like an entry, holds a user's file
    (home / "photos-0123456789abcdef" / "cat.jpg").write_bytes(b"jpg")
    (home / "results.log").write_text("ERROR: mine")
    return home


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "purge"])
def test_clean_cache_leaves_a_folder_it_did_not_make_alone(tmp_path, capsys, clean_cache_only, dry_run):
    home = fake_home(tmp_path)
    before = sorted(str(p) for p in home.rglob("*"))
    args = ["clean-cache", "--root", str(home), "--failures-root", str(home), "--json"]
    assert cli.main(args + (["--dry-run"] if dry_run else [])) == 0
    payload = json.loads(capsys.readouterr().out)
    assert sorted(str(p) for p in home.rglob("*")) == before
    assert payload["removed"] == []
    assert {e["state"] for e in payload["entries"]} == {"foreign"}
    listed = {Path(e["path"]).name for e in payload["entries"]}
    assert {".ssh", "Documents", ".bashrc", "photos-0123456789abcdef"} <= listed


def test_clean_cache_still_purges_its_own_entries_beside_foreign_ones(tmp_path, capsys, clean_cache_only):
    store = make_store(tmp_path)
    ready = store.get_or_build("llama", INPUTS, build)
    (store.root / "notes").mkdir()
    (store.root / "notes" / "todo.txt").write_text("mine")
    corrupt = store.get_or_build("qwen3", INPUTS, build)
    (corrupt.path / "model.pt2").write_bytes(b"short")
    args = ["clean-cache", "--root", str(store.root), "--failures-root", str(store.failures_root)]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert not corrupt.path.exists() and ready.path.is_dir()
    assert (store.root / "notes" / "todo.txt").read_text() == "mine"
    assert any(line.startswith("foreign") and "notes" in line for line in out.splitlines())


def test_clean_cache_default_root_is_the_projects_not_the_current_folder(
    tmp_path, capsys, monkeypatch, clean_cache_only
):
    project = tmp_path / "project"
    (project / "port_specs").mkdir(parents=True)
    (project / "neuron_port" / "llama").mkdir(parents=True)
    monkeypatch.chdir(project / "neuron_port" / "llama")
    assert cli.main(["clean-cache", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["root"] == str(project.resolve() / "agent_artifacts" / "data" / "compiled_model")
    assert payload["failures_root"].endswith("agent_artifacts/data/compilation_failures")

    elsewhere = tmp_path / "not_a_project"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert cli.main(["clean-cache"]) == 2
    assert "pass --root" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------- in use

HOLDER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from pytest_autoport.artifacts import ArtifactStore

    def build(out):
        (out / "model.pt2").write_bytes(b"graph" * 50)
        return {{"graphs": ["model.pt2"]}}

    store = ArtifactStore(Path({root!r}), Path({failures!r}))
    entry = store.get_or_build("llama", {inputs!r}, build, hold=True)
    print(entry.path, flush=True)
    sys.stdin.read()  # a verdict still loading the graphs
    print((entry.path / "model.pt2").stat().st_size, flush=True)
    """
)


def test_clean_cache_option_skips_an_entry_a_running_verdict_uses(tmp_path, capsys):
    from pytest_autoport.plugin import _clean_cache

    store = make_store(tmp_path / "agent_artifacts" / "data")
    code = HOLDER.format(root=str(store.root), failures=str(store.failures_root), inputs=INPUTS)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    holder = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        entry_path = Path(holder.stdout.readline().strip())
        assert entry_path.is_dir()
        state = SimpleNamespace(
            light_spec=None,
            spec_path=Path("llama.toml"),
            artifacts_dir=tmp_path / "agent_artifacts",
            target_name=lambda: "torch",
        )
        _clean_cache(state)
        assert entry_path.is_dir()
        assert "in use" in capsys.readouterr().err
        out, _ = holder.communicate("", timeout=30)
        assert holder.returncode == 0 and out.strip() == "250"
    finally:
        holder.kill()
    _clean_cache(state)  # the verdict is over: now it goes
    assert not entry_path.exists()


# --------------------------------------------------------------------------------------------------- store


def test_tampered_build_record_is_corrupt_rebuilt_once_and_not_called_ready(tmp_path):
    store = make_store(tmp_path)
    calls = []
    entry = store.get_or_build("llama", INPUTS, lambda out: calls.append(1) or build(out))
    manifest = json.loads((entry.path / MANIFEST).read_text())
    manifest["build"]["graphs"] = ["missing.pt2"]
    (entry.path / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")

    [state] = store.entries()
    assert state.state == "corrupt" and "edited after the build" in state.detail
    rebuilt = store.get_or_build("llama", INPUTS, lambda out: calls.append(1) or build(out))
    assert rebuilt.built and "manifest.json" in rebuilt.recovered_from
    assert rebuilt.manifest["build"] == {"graphs": ["model.pt2"]}
    assert store.get_or_build("llama", INPUTS, build).built is False and len(calls) == 2


def test_next_build_of_a_key_removes_its_killed_builds_leftovers(tmp_path):
    store = make_store(tmp_path)
    key = artifact_key(INPUTS)
    store.root.mkdir(parents=True)
    killed = store.root / f".tmp-llama-{key}-999999999-k1ll3d"
    killed.mkdir()
    (killed / OWNER_MARKER).write_text("{}")
    (killed / "half.pt2").write_bytes(b"half")
    stranger = store.root / f".tmp-llama-{key}-999999998-notmine"
    stranger.mkdir()
    (stranger / "keep.txt").write_text("not the store's")

    entry = store.get_or_build("llama", INPUTS, build)
    assert not killed.exists() and entry.cleaned == (killed.name,)
    assert (stranger / "keep.txt").is_file()
    assert {s.path: s.state for s in store.entries()}[stranger] == "foreign"
    assert store.purge() == [] and stranger.is_dir()


def test_interrupted_removal_stays_provably_the_stores(tmp_path, monkeypatch):
    store = make_store(tmp_path)
    entry = store.get_or_build("llama", INPUTS, build)
    real_unlink = Path.unlink

    def killed_midway(self, missing_ok=False):
        if self.name == "model.pt2":
            raise KeyboardInterrupt
        return real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        store.drop(next(iter(store.entries())))
    monkeypatch.undo()
    [state] = store.entries()
    assert state.state == "corrupt" and (entry.path / OWNER_MARKER).is_file()
    assert [s.path for s in store.purge()] == [entry.path] and not entry.path.exists()


# --------------------------------------------------------------------------------------------------- verdicts


def test_harness_version_is_in_the_compile_key(monkeypatch):
    import pytest_autoport
    from pytest_autoport.stages.compile import harness_fingerprint

    before = harness_fingerprint()
    monkeypatch.setattr(pytest_autoport, "__version__", "99.0")
    assert harness_fingerprint() != before and harness_fingerprint()["version"] == "99.0"


def own_checkpoint(project, tiny_weights) -> Path:
    """A copy of the tiny llama checkpoint as a user's own (no tiny marker), used by the project's spec."""
    folder = project.root / "my_checkpoint"
    shutil.copytree(tiny_weights("llama"), folder, ignore=shutil.ignore_patterns(TINY_MARKER, "*.lock"))
    text = project.spec.read_text()
    project.spec.write_text(text.replace(str(tiny_weights("llama")), str(folder)))
    return folder


def test_replaced_checkpoint_recompiles_and_golden_passes(port_project, tiny_weights, tmp_path):
    folder = own_checkpoint(port_project, tiny_weights)
    port_project.run("-k", "compile")
    first = port_project.stage("compile")["figures"]
    assert first["compiled"] is True

    other = resolve_weights(tiny_spec(tmp_path / "other")).path / "model.safetensors"
    target = folder / "model.safetensors"
    stat = target.stat()
    assert other.stat().st_size == stat.st_size  # same shapes, other values
    shutil.copyfile(other, target)
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    port_project.run("-k", "compile or generate or golden")
    second = port_project.stage("compile")["figures"]
    assert second["compiled"] is True and second["key"] != first["key"]
    assert port_project.statuses() == {"compile": "passed", "generate": "passed", "golden": "passed"}


def test_rebuilds_and_leftovers_are_reported_on_the_terminal(llama_verdict, compiled_port_project):
    port_project = compiled_port_project
    built = Path(llama_verdict.stage("compile")["figures"]["artifact"])
    entry = port_project.root / "agent_artifacts" / "data" / "compiled_model" / built.name
    manifest = json.loads((entry / MANIFEST).read_text())
    manifest["build"]["graphs"] = {}
    (entry / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    name, key = entry.name.rsplit("-", 1)
    killed = entry.parent / f".tmp-{name}-{key}-999999999-k1ll3d"
    killed.mkdir()
    (killed / OWNER_MARKER).write_text("{}")

    result = port_project.run("-k", "compile")
    figures = port_project.stage("compile")["figures"]
    assert port_project.stage("compile")["status"] == "passed"
    assert figures["compiled"] is True and "manifest.json" in figures["rebuilt_after"]
    assert figures["cleaned_leftovers"] == [killed.name] and not killed.exists()
    out = result.stdout.str()
    assert "RebuildWarning" in out and "rebuilt: manifest.json" in out and killed.name in out
    assert "compiled, rebuilt: corrupt entry" in out  # the verdict table's compile line
