"""The suite in a checkout where the user keeps specs of their own in port_specs/ (issue 18): a spec
without a ``[tiny]`` table, or one that does not parse, leaves every test module collecting, the
session fixtures setting up, and the bundled-spec tests to the bundled specs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_a_user_spec_without_tiny_breaks_no_collection_or_fixture(tmp_path):
    checkout = tmp_path / "checkout"
    shutil.copytree(REPO / "tests", checkout / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "port_specs", checkout / "port_specs")
    shutil.copy(REPO / "pyproject.toml", checkout)
    (checkout / "neuron_port").symlink_to(REPO / "neuron_port")
    llama = (REPO / "port_specs" / "llama.toml").read_text()
    mine = llama[: llama.index("\n[tiny]")].replace('name = "llama"', 'name = "mine"', 1)
    (checkout / "port_specs" / "mine.toml").write_text(mine.replace("data/llama", "data/mine"))
    (checkout / "port_specs" / "half_written.toml").write_text("[model\n")

    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    # every module collected; the session fixtures set up for one cheap test (the fork server imports
    # what they do: test_forked_runs.py checks it without a subprocess)
    chosen = "test_bundled_tiny_keys_are_accepted"
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "tests", "-p", "no:cacheprovider", "-v", "-k", chosen,
         f"--basetemp={tmp_path / 'basetemp'}"],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-3000:]
    assert "llama.toml] PASSED" in out
    assert "mine.toml" not in out and "half_written.toml" not in out
