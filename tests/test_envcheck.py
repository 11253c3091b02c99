"""Tests of the environment checker: package status in a child interpreter, NeuronCore detection,
runnable stages per target, ``--check-env`` and ``autoport env``.

Fake packages live in a temporary folder on PYTHONPATH and a fake ``neuron-ls`` on PATH; nothing
needs the Neuron SDK or the network."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pytest_autoport import cli, envcheck, neuron_devices, package_probe
from pytest_autoport.envcheck import NO_CORES_REASON, STAGES, EnvReport, PackageStatus, target_stages

ROOT = Path(__file__).resolve().parents[1]
NXDI_REASON_PREFIX = "neuronx-distributed-inference is not importable: "


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def fake_site(tmp_path, monkeypatch):
    """A folder of fake packages, first on PYTHONPATH (for the checker's child interpreter)."""
    site = tmp_path / "site"
    write(site / "okmod" / "__init__.py", "__version__ = '1.2.3'\n")
    write(site / "glibcmod" / "__init__.py", "raise ImportError('GLIBC_2.34 not found')\n")
    write(site / "depmod" / "__init__.py", "import some_absent_dependency_xyz\n")
    write(site / "segvmod.py", "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n")
    write(site / "hangmod.py", "import time\ntime.sleep(60)\n")
    # an installed distribution with no module: what the public registries' placeholders look like
    write(
        site / "emptydist-0.1.0.dist-info" / "METADATA",
        "Metadata-Version: 2.1\nName: emptydist\nVersion: 0.1.0\n",
    )
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), str(ROOT)]))
    return site


def add_fake_nxdi(site: Path, config_error: str | None = None) -> None:
    """A stand-in neuronx_distributed_inference; ``config_error`` makes its config module fail."""
    write(site / "neuronx_distributed_inference" / "__init__.py", "__version__ = '0.8.0'\n")
    write(site / "neuronx_distributed_inference" / "models" / "__init__.py", "")
    body = f"raise ModuleNotFoundError({config_error!r}, name='torch_neuronx')\n" if config_error else ""
    write(
        site / "neuronx_distributed_inference" / "models" / "config.py",
        body + "class InferenceConfig: pass\n",
    )


# -- missing vs broken ----------------------------------------------------------------------------
def test_ok_missing_and_broken_are_told_apart(fake_site):
    result = envcheck.check_packages(
        ["okmod", "glibcmod", "absentmod_xyz", "depmod", "emptydist"], refresh=True
    )

    assert result["okmod"].status == "ok"
    assert result["okmod"].version == "1.2.3"
    assert result["okmod"].location == str(fake_site / "okmod")

    assert result["glibcmod"].status == "broken"
    assert result["glibcmod"].error == "ImportError: GLIBC_2.34 not found"

    assert result["absentmod_xyz"].status == "missing"
    assert "No module named 'absentmod_xyz'" in result["absentmod_xyz"].error

    # present, but a dependency is missing: reinstalling this package will not help
    assert result["depmod"].status == "broken"
    assert "some_absent_dependency_xyz" in result["depmod"].error

    # a distribution without its module: not "ok", and the error says why
    assert result["emptydist"].status == "missing"
    assert "installed but provides no module 'emptydist'" in result["emptydist"].error


def test_neuron_placeholder_distribution_is_not_ok(fake_site):
    write(
        fake_site / "neuronx_distributed_inference-0.1.0.dist-info" / "METADATA",
        "Metadata-Version: 2.1\nName: neuronx-distributed-inference\nVersion: 0.1.0\n",
    )
    status = envcheck.check_packages(["neuronx-distributed-inference"], refresh=True)[
        "neuronx_distributed_inference"
    ]
    assert status.status == "missing"
    assert status.version == "0.1.0"
    assert "placeholder" in status.error and "pip.repos.neuron.amazonaws.com" in status.error
    assert "placeholder 0.1.0" in status.describe()


def test_nxdi_counts_as_broken_when_its_config_module_fails(fake_site):
    add_fake_nxdi(fake_site, config_error="No module named 'torch_neuronx'")
    status = envcheck.check_packages(["neuronx_distributed_inference"], refresh=True)[
        "neuronx_distributed_inference"
    ]
    assert status.status == "broken"
    assert status.error == "ModuleNotFoundError: No module named 'torch_neuronx'"


def test_a_crashing_import_is_broken_and_the_rest_still_checked(fake_site):
    result = envcheck.check_packages(["okmod", "segvmod", "glibcmod"], refresh=True)
    assert result["okmod"].status == "ok"
    assert result["segvmod"].status == "broken"
    assert "SIGSEGV" in result["segvmod"].error
    assert result["glibcmod"].status == "broken"  # checked in a fresh child after the crash


def test_a_hanging_import_times_out(fake_site):
    result = envcheck.check_packages(["hangmod", "okmod"], timeout=1.5, refresh=True)
    assert result["hangmod"].status == "broken"
    assert "did not finish" in result["hangmod"].error
    assert result["okmod"].status == "ok"


def test_module_import_does_not_import_torch():
    code = (
        "import sys, pytest_autoport.envcheck; print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.split() == ["False", "False"]


# -- NeuronCores ------------------------------------------------------------------------------------
NEURON_LS_TRN1 = json.dumps(
    [
        {"neuron_device": 0, "bdf": "0000:00:1e.0", "nc_count": 2, "neuroncore_ids": [0, 1]},
        {"neuron_device": 1, "bdf": "0000:00:1f.0", "nc_count": 2, "neuroncore_ids": [2, 3]},
    ]
)


@pytest.fixture
def fake_bin(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv(envcheck.DEV_GLOB_ENV, str(tmp_path / "dev" / "neuron*"))
    monkeypatch.setattr(neuron_devices, "NEURON_LS_FALLBACK", str(tmp_path / "no-such-neuron-ls"))
    return bin_dir


def fake_neuron_ls(bin_dir: Path, stdout: str, rc: int = 0, stderr: str = "") -> None:
    script = bin_dir / "neuron-ls"
    script.write_text(
        f"#!/bin/sh\ncat <<'EOF'\n{stdout}\nEOF\nprintf '%s' {json.dumps(stderr)} >&2\nexit {rc}\n"
    )
    script.chmod(0o755)


def test_neuron_cores_from_fake_neuron_ls(fake_bin):
    fake_neuron_ls(fake_bin, NEURON_LS_TRN1)
    cores, exe, error = envcheck.neuron_core_count()
    assert (cores, exe, error) == (4, str(fake_bin / "neuron-ls"), None)


def test_neuron_ls_without_a_driver_means_zero_cores(fake_bin):
    fake_neuron_ls(fake_bin, "", rc=1, stderr='level=fatal msg="failed to discover Neuron devices"')
    cores, _, error = envcheck.neuron_core_count()
    assert cores == 0 and "failed to discover" in error


def test_no_neuron_ls_means_unknown_cores(fake_bin, monkeypatch):
    monkeypatch.setenv("PATH", str(fake_bin))
    assert envcheck.neuron_core_count() == (None, None, "neuron-ls not found")


def test_unreadable_neuron_ls_output(fake_bin):
    fake_neuron_ls(fake_bin, "not json")
    cores, _, error = envcheck.neuron_core_count()
    assert cores is None and "cannot read" in error


def test_parse_neuron_ls_shapes():
    assert envcheck.parse_neuron_ls(NEURON_LS_TRN1) == 4
    assert envcheck.parse_neuron_ls(json.dumps({"neuron_devices": [{"neuroncore_ids": [0, 1, 2]}]})) == 3
    assert envcheck.parse_neuron_ls("[]") == 0


def test_device_files_are_listed(fake_bin, tmp_path):
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "neuron1").touch()
    (tmp_path / "dev" / "neuron0").touch()
    assert envcheck.neuron_device_paths() == [
        str(tmp_path / "dev" / "neuron0"),
        str(tmp_path / "dev" / "neuron1"),
    ]


# -- stages per target ----------------------------------------------------------------------------------
def report(missing=(), broken=(), cores=None, devices=()) -> EnvReport:
    packages = {}
    for name in envcheck.ALL_PACKAGES:
        dist = envcheck.KNOWN_PACKAGES[name][0]
        if name in missing:
            packages[name] = PackageStatus(
                name, "missing", None, None, f"ModuleNotFoundError: No module named '{name}'", dist
            )
        elif name in broken:
            packages[name] = PackageStatus(
                name, "broken", "1.0", None, "ImportError: GLIBC_2.34 not found", dist
            )
        else:
            packages[name] = PackageStatus(name, "ok", "9.9", f"/site/{name}", None, dist)
    packages["torch"].version, packages["transformers"].version = "2.13.0", "5.24.0"
    return EnvReport("3.11.7", "Linux", packages, list(devices), cores)


def test_torch_target_runs_everything_when_torch_and_transformers_import():
    assert report(missing=envcheck.NXDI_PACKAGES).runnable_stages["torch"] == list(STAGES)


def test_torch_target_without_transformers():
    r = report(missing=("transformers",))
    assert r.runnable_stages["torch"] == ["env", "spec"]
    assert r.unavailable_reason("torch", "model") == (
        "transformers is not importable: ModuleNotFoundError: No module named 'transformers'"
    )


def test_nxdi_without_nxdi_runs_env_spec_weights_only():
    r = report(missing=envcheck.NXDI_PACKAGES)
    assert r.runnable_stages["nxdi"] == ["env", "spec", "weights"]
    assert r.unavailable_reason("nxdi", "component[mlp]") == (
        NXDI_REASON_PREFIX + "ModuleNotFoundError: No module named 'neuronx_distributed_inference'"
    )
    assert r.unavailable_reason("nxdi", "golden").startswith(NXDI_REASON_PREFIX)


def test_nxdi_broken_shows_the_import_error():
    r = report(broken=("neuronx_distributed_inference",))
    assert r.unavailable_reason("nxdi", "model") == NXDI_REASON_PREFIX + "ImportError: GLIBC_2.34 not found"


def test_nxdi_weights_needs_safetensors():
    r = report(missing=envcheck.NXDI_PACKAGES + ("safetensors",))
    assert r.runnable_stages["nxdi"] == ["env", "spec"]
    assert r.unavailable_reason("nxdi", "weights").startswith("safetensors is not importable")


def test_nxdi_cpu_mode_without_cores():
    r = report(cores=0)
    assert r.runnable_stages["nxdi"] == [
        "env",
        "spec",
        "weights",
        "component",
        "model",
        "generate[cpu]",
        "golden[cpu]",
        "sharding[tp=2]",
    ]
    for stage in ("compile", "generate", "golden"):
        assert r.unavailable_reason("nxdi", stage) == NO_CORES_REASON


@pytest.mark.parametrize("cores,devices", [(2, ()), (None, ("/dev/neuron0",))])
def test_nxdi_with_cores_or_devices_runs_everything(cores, devices):
    runnable = report(cores=cores, devices=devices).runnable_stages["nxdi"]
    assert runnable == [s for s in target_stages("nxdi") if s not in ("generate[cpu]", "golden[cpu]")]


def test_unknown_target():
    assert "unknown target 'tpu'" in report().unavailable_reason("tpu", "model")


def test_summary_and_dict():
    r = report(missing=("neuronx_distributed_inference", "neuronxcc"))
    lines = r.summary_lines()
    assert lines[0] == (
        "autoport: python 3.11.7, torch 2.13.0, transformers 5.24.0; "
        "nxdi: neuronx-distributed-inference missing; NeuronCores: none"
    )
    assert lines[1] == "autoport: target torch: all stages can run here"
    data = json.loads(json.dumps(r.to_dict()))
    assert data["packages"]["neuronx_distributed_inference"]["status"] == "missing"
    assert data["runnable_stages"]["nxdi"] == ["env", "spec", "weights"]
    assert data["unavailable"]["nxdi"]["model"].startswith(NXDI_REASON_PREFIX)
    assert set(data["paths"]) == {"NXDI_SRC", "NXD_SRC", "TRANSFORMERS_SRC"}


def test_check_environment_with_stand_in_nxdi_and_fake_cores(fake_site, fake_bin):
    add_fake_nxdi(fake_site)
    fake_neuron_ls(fake_bin, NEURON_LS_TRN1)
    r = envcheck.check_environment("nxdi", refresh=True)
    assert r.packages["neuronx_distributed_inference"].status == "ok"
    assert r.neuron_cores == 4
    assert set(STAGES) < set(r.runnable_stages["nxdi"])
    assert r.summary_lines()[1] == "autoport: target nxdi: all stages can run here"


# -- --check-env and autoport env ----------------------------------------------------------------------
def check_env(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytest_autoport.envcheck", "--check-env", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def resolved(stdout: str) -> dict[str, str]:
    return dict(
        line[len("RESOLVED:") :].split("=", 1) for line in stdout.splitlines() if line.startswith("RESOLVED:")
    )


def test_check_env_ready(fake_site):
    add_fake_nxdi(fake_site)
    proc = check_env("--require", "okmod,neuronx_distributed_inference")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    paths = resolved(proc.stdout)
    assert list(paths) == ["NXDI_SRC", "NXD_SRC", "TRANSFORMERS_SRC"]
    assert paths["NXDI_SRC"] == str(fake_site / "neuronx_distributed_inference")
    transformers = importlib.util.find_spec("transformers")
    assert paths["TRANSFORMERS_SRC"] == (
        str(transformers.submodule_search_locations[0]) if transformers else ""
    )


def test_check_env_missing_exits_1(fake_site):
    proc = check_env("--require", "okmod", "--require", "absentmod_xyz")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "MISSING  absentmod_xyz" in proc.stdout
    assert len(resolved(proc.stdout)) == 3


def test_check_env_broken_exits_5(fake_site):
    proc = check_env("--require", "absentmod_xyz,glibcmod")
    assert proc.returncode == 5, proc.stdout + proc.stderr
    assert "BROKEN   glibcmod: ImportError: GLIBC_2.34 not found" in proc.stdout
    assert "reinstalling will not fix it" in proc.stdout


def test_autoport_env_json(monkeypatch, capsys):
    monkeypatch.setattr(cli, "COMMANDS", {"env": cli.COMMANDS["env"]})  # other subcommands may not exist yet
    rc = cli.main(["env", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert set(data["packages"]) == set(envcheck.ALL_PACKAGES)
    assert set(data["runnable_stages"]) == {"torch", "nxdi"}
    assert data["target"] == "torch"
    torch_ok = (
        data["packages"]["torch"]["status"] == "ok" and data["packages"]["transformers"]["status"] == "ok"
    )
    assert rc == (0 if torch_ok else 1)

    rc = cli.main(["env", "--target", "nxdi"])
    out = capsys.readouterr().out
    assert "nxdi:" in out and "NeuronCores:" in out
    if data["packages"]["neuronx_distributed_inference"]["status"] != "ok":
        assert rc == 1 and NXDI_REASON_PREFIX in out


def test_a_verdict_process_checks_its_packages_without_a_child(fake_site, monkeypatch):
    """Inside a verdict torch and transformers are imported already and an absent package is on no
    path: the check reports both from this process and starts no interpreter (seconds saved)."""
    import torch
    import transformers

    def no_child(*args):
        raise AssertionError("a child interpreter was started")

    with monkeypatch.context() as patch:
        patch.setattr(package_probe, "_run_child", no_child)
        names = ["torch", "transformers", "absentmod_xyz", "emptydist"]
        result = envcheck.check_packages(names, refresh=True)
    assert (result["torch"].status, result["torch"].version) == ("ok", torch.__version__)
    assert result["transformers"].status == "ok"
    assert result["transformers"].location == os.path.dirname(transformers.__file__)
    assert result["absentmod_xyz"].status == "missing"
    assert result["emptydist"].status == "missing" and "provides no module" in result["emptydist"].error
    # a module on the path that is not imported yet still goes to a child
    assert envcheck.check_packages(["okmod"], refresh=True)["okmod"].version == "1.2.3"
