"""Tests of scripts/setup_autoport.sh: every exit code, on a faked system.

The system is faked with PATH shims in a temporary folder: ``dpkg-query`` / ``rpm`` answer for the
Neuron system packages, and a fake ``python`` plays the base interpreter, ``-m venv``, ``-m pip``
and the checker (its exit code chosen per test, before and after the install). PATH holds only
those shims plus links to the few coreutils the script uses, so nothing real is installed or found.
One last test runs the real checker in this test's own environment with ``--validate-only``."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "setup_autoport.sh"
BASH = shutil.which("bash")
SYSTEM_PACKAGES = [
    "aws-neuronx-dkms",
    "aws-neuronx-runtime-lib",
    "aws-neuronx-collectives",
    "aws-neuronx-tools",
]
UTILITIES = ["sed", "head", "tr", "grep", "dirname", "cat", "mkdir", "cp", "touch", "env"]

UBUNTU = 'NAME="Ubuntu"\nID=ubuntu\nVERSION_ID="22.04"\nPRETTY_NAME="Ubuntu 22.04.4 LTS"\n'
AL2023 = 'NAME="Amazon Linux"\nID="amzn"\nVERSION_ID="2023"\nPRETTY_NAME="Amazon Linux 2023.6"\n'
DEBIAN = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n'

FAKE_PYTHON = r"""#!BASH
echo "$0 $*" >> "$FAKE_STATE/calls.log"
case "$1" in
    -c) echo "${FAKE_PY_VERSION:-3.11.7}"; exit 0 ;;
    -m)
        case "$2" in
            venv)
                [ "${FAKE_VENV_RC:-0}" = 0 ] || exit "$FAKE_VENV_RC"
                mkdir -p "$3/bin" && cp "$0" "$3/bin/python"; exit $? ;;
            pip)
                if [ "${FAKE_PIP_RC:-0}" != 0 ]; then echo "ERROR: fake pip failure" >&2; exit "$FAKE_PIP_RC"; fi
                touch "$FAKE_STATE/installed"; exit 0 ;;
            pytest_autoport.envcheck)
                if [ -e "$FAKE_STATE/installed" ]; then rc="${FAKE_CHECK_AFTER:-0}"; else rc="${FAKE_CHECK_BEFORE:-1}"; fi
                echo "check-env: fake checker, exit $rc"
                echo "RESOLVED:NXDI_SRC=/fake/site/neuronx_distributed_inference"
                echo "RESOLVED:NXD_SRC=/fake/site/neuronx_distributed"
                echo "RESOLVED:TRANSFORMERS_SRC=/fake/site/transformers"
                exit "$rc" ;;
        esac ;;
esac
echo "fake python: unexpected call: $*" >&2
exit 99
"""

FAKE_DPKG_QUERY = r"""#!BASH
pkg="${@: -1}"
for p in $FAKE_SYSTEM_PACKAGES; do
    if [ "$p" = "$pkg" ]; then printf 'install ok installed'; exit 0; fi
done
echo "dpkg-query: no packages found matching $pkg" >&2
exit 1
"""

FAKE_RPM = r"""#!BASH
pkg="${@: -1}"
for p in $FAKE_SYSTEM_PACKAGES; do
    if [ "$p" = "$pkg" ]; then echo "$pkg-2.28.0-1.x86_64"; exit 0; fi
done
echo "package $pkg is not installed"
exit 1
"""

EXPECTED_RESOLVED = [
    "RESOLVED:NXDI_SRC=/fake/site/neuronx_distributed_inference",
    "RESOLVED:NXD_SRC=/fake/site/neuronx_distributed",
    "RESOLVED:TRANSFORMERS_SRC=/fake/site/transformers",
]


class FakeSystem:
    def __init__(self, tmp_path: Path):
        self.tmp = tmp_path
        self.bin = tmp_path / "bin"
        self.state = tmp_path / "state"
        self.work = tmp_path / "work"  # the working directory: ./_venv would go here
        for folder in (self.bin, self.state, self.work):
            folder.mkdir()
        for name in UTILITIES:
            os.symlink(shutil.which(name), self.bin / name)
        self.python = self.shim("fakepy", FAKE_PYTHON)
        self.os_release = tmp_path / "os-release"
        self.os_release.write_text(UBUNTU)
        self.env = {
            "PATH": str(self.bin),
            "HOME": str(tmp_path),
            "AUTOPORT_OS_RELEASE": str(self.os_release),
            "AUTOPORT_PYTHON": str(self.python),
            "FAKE_STATE": str(self.state),
            "FAKE_SYSTEM_PACKAGES": " ".join(SYSTEM_PACKAGES),
        }
        self.shim("dpkg-query", FAKE_DPKG_QUERY)

    def shim(self, name: str, text: str) -> Path:
        path = self.bin / name
        path.write_text(text.replace("#!BASH", f"#!{BASH}", 1))
        path.chmod(0o755)
        return path

    def make_venv(self, name: str = "venv") -> Path:
        venv = self.tmp / name
        (venv / "bin").mkdir(parents=True)
        shutil.copy(self.python, venv / "bin" / "python")
        return venv

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [BASH, str(SCRIPT), *args],
            env={**self.env, **env},
            cwd=self.work,
            capture_output=True,
            text=True,
            timeout=300,  # the real checker imports torch and transformers: slow on a busy machine
        )
        proc.output = proc.stdout + proc.stderr
        return proc

    def calls(self) -> list[str]:
        log = self.state / "calls.log"
        return log.read_text().splitlines() if log.exists() else []

    def pip_calls(self) -> list[str]:
        return [c for c in self.calls() if " -m pip " in c]


@pytest.fixture
def fake(tmp_path):
    return FakeSystem(tmp_path)


def resolved_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("RESOLVED:")]


# -- 0: ready ------------------------------------------------------------------------------------
def test_existing_ready_venv_exits_0_without_installing(fake):
    venv = fake.make_venv()
    proc = fake.run("--venv", str(venv), FAKE_CHECK_BEFORE="0")
    assert proc.returncode == 0, proc.output
    assert resolved_lines(proc.stdout) == EXPECTED_RESOLVED
    assert fake.pip_calls() == []


def test_validate_only_ready_exits_0(fake):
    venv = fake.make_venv()
    proc = fake.run("--venv", str(venv), "--validate-only", FAKE_CHECK_BEFORE="0")
    assert proc.returncode == 0, proc.output
    assert resolved_lines(proc.stdout) == EXPECTED_RESOLVED


def test_dry_run_ready_exits_0_with_resolved_lines(fake):
    venv = fake.make_venv()
    proc = fake.run("--venv", str(venv), "--dry-run", FAKE_CHECK_BEFORE="0")
    assert proc.returncode == 0, proc.output
    assert resolved_lines(proc.stdout) == EXPECTED_RESOLVED


def test_fresh_install_creates_default_venv_installs_and_exits_0(fake):
    proc = fake.run(FAKE_CHECK_AFTER="0")
    assert proc.returncode == 0, proc.output
    assert (fake.work / "_venv" / "bin" / "python").exists()
    assert f"{fake.python} -m venv ./_venv" in fake.calls()
    pip = fake.pip_calls()
    assert pip == [
        f"./_venv/bin/python -m pip install -r {ROOT}/scripts/requirements-ubuntu.txt",
        f"./_venv/bin/python -m pip install -e {ROOT}",
    ]
    assert resolved_lines(proc.stdout) == EXPECTED_RESOLVED


def test_missing_packages_in_existing_venv_are_installed(fake):
    venv = fake.make_venv()
    proc = fake.run("--venv", str(venv), FAKE_CHECK_BEFORE="1", FAKE_CHECK_AFTER="0")
    assert proc.returncode == 0, proc.output
    assert len(fake.pip_calls()) == 2
    # the failed first validation's paths are not printed: RESOLVED lines mean success
    assert resolved_lines(proc.stdout) == EXPECTED_RESOLVED


def test_amazon_linux_2023_uses_rpm_and_its_requirements(fake):
    fake.os_release.write_text(AL2023)
    (fake.bin / "dpkg-query").unlink()
    fake.shim("rpm", FAKE_RPM)
    proc = fake.run(FAKE_CHECK_AFTER="0")
    assert proc.returncode == 0, proc.output
    assert any("requirements-al2023.txt" in c for c in fake.pip_calls())


def test_unsupported_os_falls_back_to_ubuntu_requirements(fake):
    fake.os_release.write_text(DEBIAN)
    proc = fake.run(FAKE_CHECK_AFTER="0")
    assert proc.returncode == 0, proc.output
    assert "Debian GNU/Linux 12 (bookworm)" in proc.stdout and "not a supported OS" in proc.stdout
    assert any("requirements-ubuntu.txt" in c for c in fake.pip_calls())


def test_help_exits_0(fake):
    proc = fake.run("--help")
    assert proc.returncode == 0 and "--validate-only" in proc.stdout and "Exit codes" in proc.stdout


# -- 2: hard failures ---------------------------------------------------------------------------------
def test_missing_system_package_exits_2(fake):
    proc = fake.run(FAKE_SYSTEM_PACKAGES=" ".join(SYSTEM_PACKAGES[:-1]), FAKE_CHECK_AFTER="0")
    assert proc.returncode == 2, proc.output
    assert "missing Neuron system packages: aws-neuronx-tools" in proc.stderr
    assert fake.calls() == []  # stops before touching Python


def test_missing_system_package_on_al2023_exits_2(fake):
    fake.os_release.write_text(AL2023)
    fake.shim("rpm", FAKE_RPM)
    proc = fake.run(FAKE_SYSTEM_PACKAGES="aws-neuronx-tools")
    assert proc.returncode == 2, proc.output
    assert "aws-neuronx-dkms aws-neuronx-runtime-lib aws-neuronx-collectives" in proc.stderr
    assert "dnf install" in proc.stderr


def test_no_package_tool_exits_2(fake):
    fake.os_release.write_text(AL2023)  # rpm expected, none on PATH
    proc = fake.run()
    assert proc.returncode == 2 and "rpm not found" in proc.stderr


def test_system_check_can_be_skipped(fake):
    venv = fake.make_venv()
    proc = fake.run(
        "--venv", str(venv), FAKE_SYSTEM_PACKAGES="", FAKE_CHECK_BEFORE="0", AUTOPORT_SKIP_SYSTEM_CHECK="1"
    )
    assert proc.returncode == 0, proc.output


def test_no_python_310_exits_2(fake):
    proc = fake.run(FAKE_PY_VERSION="3.9.18")
    assert proc.returncode == 2, proc.output
    assert "is not a Python 3.10+" in proc.stderr
    assert not (fake.work / "_venv").exists()


def test_no_python_310_on_path_exits_2(fake):
    shutil.copy(fake.python, fake.bin / "python3")
    env = {k: v for k, v in fake.env.items() if k != "AUTOPORT_PYTHON"}
    fake.env = env
    proc = fake.run(FAKE_PY_VERSION="3.9.18")
    assert proc.returncode == 2, proc.output
    assert "no Python 3.10 or later found on PATH" in proc.stderr


def test_base_python_found_on_path(fake):
    shutil.copy(fake.python, fake.bin / "python3.11")
    fake.env.pop("AUTOPORT_PYTHON")
    proc = fake.run(FAKE_CHECK_AFTER="0")
    assert proc.returncode == 0, proc.output
    assert f"{fake.bin}/python3.11 -m venv ./_venv" in fake.calls()


def test_old_python_in_existing_venv_exits_2(fake):
    venv = fake.make_venv()
    proc = fake.run("--venv", str(venv), FAKE_PY_VERSION="3.8.10")
    assert proc.returncode == 2 and "older than 3.10" in proc.stderr


def test_pip_failure_exits_2(fake):
    proc = fake.run(FAKE_PIP_RC="1")
    assert proc.returncode == 2, proc.output
    assert "pip failed to install" in proc.stderr


def test_venv_creation_failure_exits_2(fake):
    proc = fake.run(FAKE_VENV_RC="1")
    assert proc.returncode == 2 and "could not create a venv" in proc.stderr


def test_validate_only_without_venv_exits_2(fake):
    proc = fake.run("--validate-only")
    assert proc.returncode == 2, proc.output
    assert not (fake.work / "_venv").exists()
    assert fake.pip_calls() == []


def test_validate_only_with_failing_venv_exits_2(fake):
    venv = fake.make_venv()
    proc = fake.run("--venv", str(venv), "--validate-only", FAKE_CHECK_BEFORE="1")
    assert proc.returncode == 2, proc.output
    assert "not usable" in proc.stderr
    assert fake.pip_calls() == []
    assert resolved_lines(proc.stdout) == []


@pytest.mark.parametrize("args", [["--bogus"], ["--venv"], ["--dry-run", "--validate-only"]])
def test_bad_arguments_exit_2(fake, args):
    assert fake.run(*args).returncode == 2


# -- 3: still failing after the install ----------------------------------------------------------------------
def test_still_failing_after_install_exits_3(fake):
    proc = fake.run(FAKE_CHECK_AFTER="1")
    assert proc.returncode == 3, proc.output
    assert len(fake.pip_calls()) == 2
    assert "still fails after the install" in proc.stderr
    assert resolved_lines(proc.stdout) == []


# -- 4: dry run that needs an install ------------------------------------------------------------------------
def tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_dry_run_without_venv_exits_4_and_creates_nothing(fake):
    before = tree(fake.tmp)
    proc = fake.run("--dry-run")
    assert proc.returncode == 4, proc.output
    assert tree(fake.work) == []
    assert [p for p in tree(fake.tmp) if p not in before] in ([], ["state/calls.log"])
    assert not any(" -m venv " in c or " -m pip " in c for c in fake.calls())
    assert "neuronx-distributed-inference==0.8.*" in proc.stdout
    assert "would" in proc.stdout


def test_dry_run_with_incomplete_venv_exits_4_and_installs_nothing(fake):
    venv = fake.make_venv()
    before = tree(venv)
    proc = fake.run("--venv", str(venv), "--dry-run", FAKE_CHECK_BEFORE="1")
    assert proc.returncode == 4, proc.output
    assert fake.pip_calls() == []
    assert tree(venv) == before
    assert resolved_lines(proc.stdout) == []


# -- 5: present but failing at import --------------------------------------------------------------------------
@pytest.mark.parametrize("mode", [[], ["--validate-only"], ["--dry-run"]])
def test_broken_packages_exit_5_without_reinstalling(fake, mode):
    venv = fake.make_venv()
    proc = fake.run("--venv", str(venv), *mode, FAKE_CHECK_BEFORE="5")
    assert proc.returncode == 5, proc.output
    assert "reinstalling will not fix" in proc.stderr
    assert fake.pip_calls() == []


def test_broken_after_install_exits_5(fake):
    proc = fake.run(FAKE_CHECK_AFTER="5")
    assert proc.returncode == 5, proc.output


# -- the real checker -------------------------------------------------------------------------------------------
def test_validate_only_with_the_real_checker(fake):
    """This test's own environment as the venv, the real checker as the validation."""
    prefix = Path(sys.prefix)
    if not any((prefix / "bin" / n).exists() for n in ("python", "python3")):
        pytest.skip("this interpreter's prefix has no bin/python")
    transformers = importlib.util.find_spec("transformers")
    if transformers is None or importlib.util.find_spec("torch") is None:
        pytest.skip("needs torch and transformers")
    env = {"PATH": f"{fake.bin}{os.pathsep}{os.environ['PATH']}", "AUTOPORT_REQUIRE": "transformers,torch"}
    proc = fake.run("--venv", str(prefix), "--validate-only", **env)
    assert proc.returncode == 0, proc.output
    lines = resolved_lines(proc.stdout)
    assert [line.split("=", 1)[0] for line in lines] == [
        "RESOLVED:NXDI_SRC",
        "RESOLVED:NXD_SRC",
        "RESOLVED:TRANSFORMERS_SRC",
    ]
    assert lines[2] == f"RESOLVED:TRANSFORMERS_SRC={transformers.submodule_search_locations[0]}"
