"""Compiled artifacts (issue 4): content-addressed reuse, recompiles on change, failures kept,
AOTInductor, --autoport-clean-cache and per-stage time limits."""

from __future__ import annotations

from pathlib import Path

import forked_pytest


def compile_figures(project):
    return project.stage("compile")["figures"]


def copied_entry(project, run) -> Path:
    """The copy in ``project`` of the artifact the shared verdict ``run`` compiled."""
    return (
        project.root
        / "agent_artifacts"
        / "data"
        / "compiled_model"
        / Path(compile_figures(run)["artifact"]).name
    )


def test_editing_port_source_recompiles(llama_verdict, compiled_port_project):
    port_project = compiled_port_project
    first = compile_figures(llama_verdict)  # the build of the unedited source, copied here
    port_project.replace("llama/modeling_llama.py", '"""Llama family port', '"""Llama family port (edited)')
    port_project.run("-k", "compile")
    second = compile_figures(port_project)
    assert first["compiled"] is True and second["compiled"] is True
    assert first["key"] != second["key"]


def test_clean_cache_option_forces_a_compile(llama_verdict, compiled_port_project):
    assert copied_entry(compiled_port_project, llama_verdict).is_dir()  # a ready artifact of this key
    compiled_port_project.run("-k", "compile", "--autoport-clean-cache")
    figures = compile_figures(compiled_port_project)
    assert figures["compiled"] is True and figures["key"] == compile_figures(llama_verdict)["key"]


def test_failed_compile_keeps_its_logs_and_names_the_folder(port_project):
    port_project.replace(
        "blocks/decoder.py",
        "        hidden_states = self.embed_tokens(input_ids)\n",
        "        hidden_states = self.embed_tokens(input_ids)\n"
        "        if hidden_states.sum() > 0:  # data-dependent control flow cannot be captured\n"
        "            hidden_states = hidden_states * 1.0\n",
    )
    port_project.run("-k", "compile")
    compile_stage = port_project.stage("compile")
    assert compile_stage["status"] == "failed"
    failures = port_project.root / "agent_artifacts" / "data" / "compilation_failures"
    folders = list(failures.iterdir())
    assert len(folders) == 1 and folders[0].name.startswith("llama_")
    assert f"logs and partial outputs are in {folders[0]}" in compile_stage["message"]
    # the folder keeps the build's record: what was built, the error and its traceback
    note = (folders[0] / "autoport_failure.txt").read_text()
    error = next(line for line in note.splitlines() if line.startswith("error: "))
    assert note.startswith("artifact: llama-") and "Traceback (most recent call last)" in note
    assert error.removeprefix("error: ") in compile_stage["message"]
    assert not any(p.name.startswith("llama-") for p in (failures.parent / "compiled_model").iterdir())


def test_aoti_compiler_generates_through_native_code(llama_aoti_verdict):
    run = llama_aoti_verdict  # -k "compile or generate or golden" --autoport-compiler=aoti, one bucket each
    assert run.statuses() == {"compile": "passed", "generate": "passed", "golden": "passed"}
    figures = compile_figures(run)
    assert figures["compiler"] == "aoti" and figures["graphs"] == 2
    assert figures["compiled"] is True
    assert run.stage("golden")["figures"]["token_match"] == 1.0


def test_spec_timeout_applies_to_its_stage(port_project):
    port_project.edit_spec("[[components]]", "[timeouts]\ncompile = 0.2\n\n[[components]]")
    port_project.run("-k", "compile", "--autoport-dtype=float32")
    compile_stage = port_project.stage("compile")
    assert compile_stage["status"] == "failed"
    assert "Timeout" in compile_stage["message"]


def test_a_stage_past_its_limit_fails_when_the_timer_signal_is_lost(port_project):
    # pytest-timeout's signal is swallowed when it lands in a finalizer; without the plugin there is
    # no signal at all, and the limit must still hold once the stage returns
    port_project.edit_spec("[[components]]", "[timeouts]\ncompile = 0.2\n\n[[components]]")
    port_project.run("-k", "compile", "--autoport-dtype=float32", "-p", "no:timeout")
    compile_stage = port_project.stage("compile")
    assert compile_stage["status"] == "failed"
    assert "Timeout (>0.2s): compile ran " in compile_stage["message"]
    assert "past its limit ([timeouts] in the spec sets it)" in compile_stage["message"]


def test_artifact_store_fixture_lists_entries(compiled_port_project):
    port_project = compiled_port_project
    port_project.pytester.makepyfile(
        test_store="""
        def test_entries(autoport_artifact_store):
            states = [e.state for e in autoport_artifact_store.entries()]
            assert states == ["ready"]
        """
    )
    result = forked_pytest.runpytest(port_project.pytester, "test_store.py", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert Path(port_project.root / "agent_artifacts" / "data" / "compiled_model").is_dir()


def test_corrupt_artifact_met_during_a_run_is_rebuilt_and_reported(llama_verdict, compiled_port_project):
    port_project = compiled_port_project
    entry = copied_entry(port_project, llama_verdict)
    graph = next(entry.glob("token_generation_*.pt2"))
    graph.write_bytes(graph.read_bytes()[:-16])
    port_project.run("-k", "compile or generate")
    figures = compile_figures(port_project)
    assert figures["compiled"] is True
    assert "token_generation" in figures["rebuilt_after"]
    assert port_project.stage("generate")["status"] == "passed"


def test_port_sources_follow_imports_into_sibling_packages(tmp_path):
    """A port built on another port (int8 on llama) must recompile when that port changes."""
    from pytest_autoport.stages.compile import port_sources

    root = tmp_path / "neuron_port"
    files = {
        "common/attention.py": "import torch\n",
        "base/modeling.py": "from neuron_port.common.attention import x\n",
        "derived/modeling.py": "from neuron_port.base.modeling import y\n",
        "relative/modeling.py": "from ..derived import modeling\nfrom . import helpers\n",
        "relative/helpers.py": "",
        "broken/modeling.py": "import neuron_port.base\n",
        "broken/scratch.py": "def oops(:\n",
        "unrelated/modeling.py": "",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)

    def packages(port: str) -> set[str]:
        return {p.parent.name for p in port_sources(root / port)}

    assert packages("base") == {"base", "common"}
    assert packages("derived") == {"derived", "base", "common"}
    assert packages("relative") == {"relative", "derived", "base", "common"}
    assert packages("broken") == {"broken", "base", "common"}
    assert packages("unrelated") == {"unrelated"}
    repo_int8 = Path(__file__).resolve().parents[1] / "neuron_port" / "int8"
    assert {"llama", "blocks"} <= {p.parent.name for p in port_sources(repo_int8)}


def test_port_sources_follow_imports_into_the_projects_own_modules(tmp_path):
    """A helper the port imports from the project's root (a package or a module beside neuron_port/)
    is hashed: editing it recompiles, as editing the port does; other ports and the harness are not."""
    from pytest_autoport.stages.compile import port_sources

    files = {
        "neuron_port/mine/modeling.py": "import mylib.cache_utils\nfrom helpers import f\nimport neuron_port\n",
        "neuron_port/other/modeling.py": "",
        "mylib/__init__.py": "",
        "mylib/cache_utils.py": "from mylib import deeper\n",
        "mylib/deeper.py": "",
        "helpers.py": "import torch\n",
        "unused.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    found = {str(p.relative_to(tmp_path)) for p in port_sources(tmp_path / "neuron_port" / "mine", tmp_path)}
    assert found == {
        "neuron_port/mine/modeling.py",
        "mylib/__init__.py",
        "mylib/cache_utils.py",
        "mylib/deeper.py",
        "helpers.py",
    }


def test_port_sources_hash_the_blocks_the_port_imports_where_they_are_found(tmp_path, monkeypatch):
    """The blocks ship with the harness, outside the project; an overriding copy replaces them."""
    from pytest_autoport import blocks
    from pytest_autoport.stages.compile import _label, port_sources

    project = tmp_path / "project"
    port = project / "neuron_port" / "mine"
    port.mkdir(parents=True)
    (port / "modeling.py").write_text("from pytest_autoport.blocks.norms import RMSNorm\n")
    installed = Path(blocks.__file__).parent
    labels = {_label(p, project): p for p in port_sources(port)}
    assert labels["blocks/norms.py"] == installed / "norms.py"
    assert labels["neuron_port/mine/modeling.py"] == port / "modeling.py"
    override = tmp_path / "planted"
    override.mkdir()
    (override / "norms.py").write_text("")
    monkeypatch.setattr(blocks, "__path__", [str(override), *blocks.__path__])
    labels = {_label(p, project): p for p in port_sources(port)}
    assert labels["blocks/norms.py"] == override / "norms.py"
    assert labels["blocks/rope.py"] == installed / "rope.py"
    (port / "modeling.py").write_text("import torch\n")
    assert port_sources(port) == [port / "modeling.py"]  # no blocks imported, none hashed
