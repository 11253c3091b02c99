"""The suite's forked verdict runs behave as a ``python -m pytest`` started in the project folder."""

from __future__ import annotations

import os

import forked_pytest

PROBE = """
import os, sys

def test_probe():
    import probe_module
    print("cwd", os.getcwd())
    print("module", probe_module.__file__)
    print("env", os.environ.get("PROBE_VALUE"))
    print("path0", sys.path[0])
    print("preloaded", "transformers" in sys.modules)
    print("harness fresh", "pytest_autoport.blocks" not in sys.modules)
"""


def test_forked_run_sees_the_project_folder_its_environment_and_a_preloaded_torch(pytester, monkeypatch):
    pytester.makepyfile(test_probe=PROBE, probe_module="")
    monkeypatch.setenv("PROBE_VALUE", "42")
    result = forked_pytest.runpytest(pytester, "-s", "-p", "no:cacheprovider", "-p", "no:autoport")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            f"*cwd {pytester.path}",
            f"module {pytester.path / 'probe_module.py'}",
            "env 42",
            f"path0 {pytester.path}",
            "preloaded True",
            "harness fresh True",
        ]
    )
    assert "warnings summary" not in result.stdout.str()
    assert os.environ["PROBE_VALUE"] == "42"


def test_failing_run_returns_its_exit_code_and_output(pytester):
    pytester.makepyfile(test_fails="def test_fails():\n    assert 1 == 2, 'one is not two'\n")
    result = forked_pytest.runpytest(pytester, "-p", "no:cacheprovider", "-p", "no:autoport")
    assert result.ret == 1
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*one is not two*"])


def test_specs_without_a_tiny_table_or_that_do_not_load_are_left_out(tmp_path):
    specs = tmp_path / "port_specs"
    specs.mkdir()
    (specs / "mine.toml").write_text(
        '[model]\nname = "mine"\nhf_model_class = "NoSuchClass"\nweights_path = "/nowhere"\n'
    )
    (specs / "broken.toml").write_text("[model\n")
    forked_pytest.import_model_modules(specs)


def test_a_sitecustomize_on_pythonpath_gets_a_new_interpreter(pytester, monkeypatch, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import os\nos.environ['STARTED_BY_SITECUSTOMIZE'] = '1'\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    pytester.makepyfile(
        test_site="import os\n\ndef test_site():\n    assert os.environ.get('STARTED_BY_SITECUSTOMIZE') == '1'\n"
    )
    forked_pytest.runpytest(pytester, "-p", "no:cacheprovider", "-p", "no:autoport").assert_outcomes(passed=1)
