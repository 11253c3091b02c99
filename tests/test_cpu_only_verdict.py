"""A verdict on a machine without NeuronCores (issue 12's leftovers): stages skipped because the
machine cannot run them are marked, the verdict is "cpu-only" (not FAILED) when everything else
passed; device stages name the missing NeuronCores; ``--autoport-target=nxdi`` plans the nxdi
stages; the env stage lists the nxdi CPU stages."""

from __future__ import annotations

import json
import textwrap
from types import SimpleNamespace

from pytest_autoport.envcheck import NO_CORES_REASON, EnvReport
from pytest_autoport.results import (
    NOT_RUN_HERE,
    SUPERSEDED,
    StageRecord,
    Verdict,
    format_table,
    write_outputs,
)
from pytest_autoport.spec import load_spec
from pytest_autoport.stages import plan

NO_CORES = {NOT_RUN_HERE: "no NeuronCores"}


def _verdict(*stages: tuple[str, str, dict], **kwargs) -> Verdict:
    verdict = Verdict(model="m", spec="m.toml", target="nxdi", dtype="float32", **kwargs)
    for sid, status, figures in stages:
        verdict.record(
            StageRecord(stage=sid.split("[")[0], id=sid, nodeid=sid, status=status, figures=figures)
        )
    return verdict


CPU_PASSED = [("env", "passed", {}), ("model", "passed", {}), ("golden[cpu]", "passed", {})]
DEVICE_SKIPPED = [
    ("compile", "skipped", NO_CORES),
    ("generate", "skipped", NO_CORES),
    ("golden", "skipped", NO_CORES),
]


def test_only_stages_this_machine_cannot_run_skipped_is_cpu_only(tmp_path):
    verdict = _verdict(*CPU_PASSED, *DEVICE_SKIPPED)
    verdict.partial = True  # as the reporter sets it for a cpu-only verdict
    assert verdict.outcome == "cpu-only" and verdict.passed is False
    line = format_table(verdict)[-2]
    assert line.startswith(
        "verdict: PASSED on the CPU path; not run here: compile, generate, golden (no NeuronCores) (m,"
    )
    json_path, _ = write_outputs(verdict, tmp_path)
    assert json_path.name == "m.partial.json"
    data = json.loads(json_path.read_text())
    assert (data["verdict"], data["passed"], data["partial"]) == ("cpu-only", False, True)
    assert data["not_run_here"] == {s: "no NeuronCores" for s in ("compile", "generate", "golden")}


def test_any_failure_or_other_skip_is_still_failed():
    failed = _verdict(*CPU_PASSED[:2], ("golden[cpu]", "failed", {}), *DEVICE_SKIPPED)
    assert failed.outcome == "failed"
    prerequisite = _verdict(*CPU_PASSED, *DEVICE_SKIPPED, ("sharding[tp=2]", "skipped", {}))
    assert prerequisite.outcome == "failed"
    nothing_ran = _verdict(*DEVICE_SKIPPED)
    assert nothing_ran.outcome == "failed"


def test_full_pass_and_dry_run_are_unchanged():
    assert _verdict(*CPU_PASSED).outcome == "passed"
    assert _verdict(*CPU_PASSED, ("compile", "skipped", {}), dry_run=True).outcome == "dry-run"


def test_cpu_stand_ins_skipped_where_the_device_stages_run_do_not_fail_a_device_verdict():
    device_run = [("env", "passed", {}), ("compile", "passed", {}), ("golden", "passed", {})]
    superseded = {SUPERSEDED: "NeuronCores present: the device stage runs instead"}
    stand_ins = [("generate[cpu]", "skipped", superseded), ("golden[cpu]", "skipped", superseded)]
    assert _verdict(*device_run, *stand_ins).outcome == "passed"
    assert _verdict(*device_run, *stand_ins, ("sharding[tp=2]", "failed", {})).outcome == "failed"
    assert _verdict(*stand_ins).outcome == "failed"  # nothing judged: never a pass


def test_plan_follows_the_effective_target(tmp_path):
    spec = load_spec(_repo() / "port_specs" / "llama.toml", _repo(), check_imports=False)
    ids = [item.id for item in plan(spec, 2, None)]
    assert "generate[cpu]" not in ids
    ids = [item.id for item in plan(spec, 2, None, target="nxdi")]
    assert ids[-6:] == ["generate[cpu]", "golden[cpu]", "sharding[tp=2]", "compile", "generate", "golden"]


def test_env_stage_lists_the_nxdi_cpu_stages(monkeypatch):
    from pytest_autoport.envcheck import PackageStatus
    from pytest_autoport.stages import env

    ok = {n: PackageStatus(n, "ok", version="1") for n in ("torch", "transformers", "safetensors")}
    ok["neuronx_distributed_inference"] = PackageStatus("neuronx_distributed_inference", "ok", version="0.9")
    report = EnvReport("3.11", "linux", ok, [], 0, target="nxdi")
    monkeypatch.setattr(env, "check_environment", lambda target: report)
    session = SimpleNamespace(target_name="nxdi", target=SimpleNamespace(unavailable_reason=lambda: None))
    runnable = env.run(session)["runnable_stages"]
    assert runnable[-3:] == ["generate[cpu]", "golden[cpu]", "sharding[tp=2]"]
    assert "compile" not in runnable
    assert report.unavailable_reason("nxdi", "generate") == NO_CORES_REASON


NO_CORES_CONFTEST = """
    from pytest_autoport.envcheck import NO_CORES_REASON
    from pytest_autoport.targets.torch_target import TorchTarget


    def _no_cores(self, stage=None):
        return NO_CORES_REASON if stage in ("compile", "generate", "golden") else None


    TorchTarget.unavailable_reason = _no_cores
"""


def test_device_stages_missing_neuron_cores_give_a_cpu_only_verdict(port_project):
    """The plugin end to end, with a target whose device stages cannot run on this machine."""
    (port_project.root / "conftest.py").write_text(textwrap.dedent(NO_CORES_CONFTEST))
    result = port_project.run("--autoport-dtype=float32")
    assert result.ret == 0
    data = port_project.results()
    assert (data["verdict"], data["passed"], data["partial"]) == ("cpu-only", False, True)
    assert not (port_project.root / "agent_artifacts" / "results" / "llama.json").exists()
    for sid in ("compile", "generate", "golden"):
        stage = port_project.stage(sid)
        assert stage["message"] == NO_CORES_REASON, "the skip names the NeuronCores, not a prerequisite"
        assert stage["figures"][NOT_RUN_HERE] == "no NeuronCores"
    result.stdout.fnmatch_lines(
        ["verdict: PASSED on the CPU path; not run here: compile, generate, golden (no NeuronCores) (llama,*"]
    )
    html = (port_project.root / "agent_artifacts" / "results" / "llama.partial.html").read_text()
    assert "PASSED on the CPU path; not run here: compile, generate, golden (no NeuronCores)" in html


def _repo():
    from pathlib import Path

    return Path(__file__).resolve().parents[1]


def test_load_spec_takes_string_paths():
    """As scripts call it (the real tier's torchrun test passes str paths)."""
    spec = load_spec(str(_repo() / "port_specs" / "llama_nxdi.toml"), str(_repo()), check_imports=False)
    assert spec.port.target == "nxdi"
