"""The env stage, the report header, dry-run mode and the nxdi target without the SDK (issue 5)."""

from __future__ import annotations

import subprocess
import sys


def test_header_and_env_stage(llama_verdict):
    llama_verdict.result.stdout.fnmatch_lines(
        ["autoport: spec *llama.toml, target torch", "autoport: python *"]
    )
    figures = llama_verdict.stage("env")["figures"]
    assert figures["target_available"] is True
    assert "golden" in figures["runnable_stages"]
    assert figures["packages"]["torch"].startswith("2.")


def test_dry_run_runs_only_target_free_stages(llama_dry_run):
    result = llama_dry_run.result
    statuses = llama_dry_run.statuses()
    assert statuses["env"] == "passed" and statuses["weights"] == "passed"
    skipped = {sid for sid, status in statuses.items() if status == "skipped"}
    assert skipped == set(statuses) - {"env", "preflight", "hygiene", "weights"}
    assert {"component[embedding]", "model", "compile", "golden"} <= skipped
    assert all(llama_dry_run.stage(sid)["message"] == "dry run" for sid in skipped)
    assert result.ret == 0
    assert llama_dry_run.results()["dry_run"] is True


def test_nxdi_target_without_sdk_skips_with_the_import_error(port_project):
    result = port_project.run("--autoport-target=nxdi")
    statuses = port_project.statuses()
    assert statuses["env"] == "passed"
    others = [sid for sid in statuses if sid not in ("env", "preflight", "hygiene")]
    assert {"weights", "model", "compile"} <= set(others)
    assert all(statuses[sid] == "skipped" for sid in others)
    assert port_project.stage("weights")["message"].startswith(
        "neuronx-distributed-inference is not importable:"
    )
    assert result.ret == 1  # nothing was verified: the verdict does not pass
    assert port_project.results()["passed"] is False


def test_autoport_cli_help_lists_commands():
    out = subprocess.run(
        [sys.executable, "-m", "pytest_autoport.cli", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0
    for command in ("verdict", "env", "clean-cache"):
        assert command in out.stdout
