"""Verdict integrity (issue 11, part B): the verdict is complete wherever the spec lives, a partial
run never stands for a full one, a dry run is not a failure, xdist keeps a spec's chain on one worker,
unexpected errors read in a few lines, non-finite decode logits are named, and results are written
with the user's file mode."""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys

import forked_pytest
import pytest
import torch

from pytest_autoport.errors import StageFailure
from pytest_autoport.generation import SamplingParams, StaticGraphs, generate
from pytest_autoport.results import write_atomic

PREREQUISITE_WEIGHTS = "prerequisite stage weights did not pass"


def _results_dir(project):
    return project.root / "agent_artifacts" / "results"


def _downstream_of_weights_skipped(statuses: dict[str, str]) -> None:
    assert statuses["env"] == "passed" and statuses["weights"] == "failed"
    independent = ("env", "preflight", "hygiene", "weights")  # stages that need no checkpoint
    assert {s for sid, s in statuses.items() if sid not in independent} == {"skipped"}


def test_spec_outside_rootdir_gets_the_full_verdict(port_project, tmp_path_factory):
    outside = tmp_path_factory.mktemp("elsewhere") / "llama.toml"
    shutil.copy(port_project.spec, outside)
    port_project.plant("wrong_weight_key")
    result = forked_pytest.runpytest(
        port_project.pytester, f"--autoport-model={outside}", "-p", "no:cacheprovider"
    )
    assert result.ret == 1
    statuses = port_project.statuses()
    _downstream_of_weights_skipped(statuses)
    assert PREREQUISITE_WEIGHTS in port_project.stage("component[mlp-layer0]")["message"]
    data = json.loads((_results_dir(port_project) / "llama.json").read_text())
    assert data["spec"] == str(outside) and data["partial"] is False
    result.stdout.fnmatch_lines(["*autoport verdict*", "verdict: FAILED (llama*", "results: *llama.json"])
    assert (port_project.root / "agent_artifacts" / "traces" / "port_summary.md").exists()


def test_selection_writes_a_partial_verdict_and_keeps_the_full_one(port_project):
    full = _results_dir(port_project) / "llama.json"
    full.parent.mkdir(parents=True)
    full.write_text('{"passed": true, "stages": ["the full verdict CI reads"]}\n')
    result = port_project.run("-k", "env")
    assert result.ret == 0
    assert json.loads(full.read_text())["stages"] == ["the full verdict CI reads"]
    partial = json.loads((_results_dir(port_project) / "llama.partial.json").read_text())
    assert partial["partial"] is True
    assert [s["id"] for s in partial["stages"]] == ["env"]
    selection = partial["selection"]
    assert selection["keyword"] == "env" and selection["selected"] == 1
    assert selection["deselected"] == selection["planned"] - 1 > 20
    result.stdout.fnmatch_lines(
        [
            "verdict: PARTIAL, PASSED (llama*",
            "partial run: 1 of * stages selected (-k env)*",
            "results: *llama.partial.json",
        ]
    )
    assert (port_project.root / "agent_artifacts" / "traces" / "port_summary.partial.md").exists()

    port_project.edit_spec("[port]", "[port")  # a typo: the spec no longer parses
    assert port_project.run("-k", "env").ret != 0
    assert json.loads(full.read_text())["stages"] == ["the full verdict CI reads"]
    partial = json.loads((_results_dir(port_project) / "llama.partial.json").read_text())
    assert partial["error"] and partial["partial"] is True

    # without a selection the broken spec is a full verdict attempt: it replaces the full verdict, saying why
    assert port_project.run().ret != 0
    broken = json.loads(full.read_text())
    assert broken["passed"] is False and broken["partial"] is False and "llama.toml" in broken["error"]


def test_dry_run_is_not_a_failure(llama_dry_run):
    result = llama_dry_run.result
    assert result.ret == 0
    data = json.loads((_results_dir(llama_dry_run) / "llama.partial.json").read_text())
    assert data["verdict"] == "dry-run" and data["passed"] is False and data["partial"] is True
    assert not (_results_dir(llama_dry_run) / "llama.json").exists()
    statuses = [s["status"] for s in data["stages"]]
    ran = [s["id"] for s in data["stages"] if s["status"] == "passed"]
    assert ran == ["env", "preflight", "hygiene", "weights"]  # the stages that need no target
    result.stdout.fnmatch_lines(
        [f"verdict: DRY RUN: {len(ran)} passed, {statuses.count('skipped')} skipped (llama*"]
    )
    assert "FAILED" not in result.stdout.str()


@pytest.mark.parametrize("dist", [None, "worksteal"])  # None: -n alone, i.e. --dist load
def test_xdist_keeps_one_spec_on_one_worker(port_project, dist):
    pytest.importorskip("xdist")
    port_project.plant("wrong_weight_key")
    result = port_project.run("-n", "2", *(["--dist", dist] if dist else []))
    assert result.ret == 1
    statuses = port_project.statuses()
    _downstream_of_weights_skipped(statuses)
    for sid in ("component[mlp-layer0]", "model"):
        assert PREREQUISITE_WEIGHTS in port_project.stage(sid)["message"]
    full = json.loads((_results_dir(port_project) / "llama.json").read_text())
    assert full["partial"] is False and full["selection"]["selected"] == full["selection"]["planned"]


RAISE_IN_INIT = (
    "llama/modeling_llama.py",
    "        self.cache = KVCache(",
    '        raise RuntimeError("attention cannot be built") from KeyError("rope_scaling")\n'
    "        self.cache = KVCache(",
)


def test_unexpected_error_reads_in_a_few_lines(port_project):
    port_project.replace(*RAISE_IN_INIT)
    # each of the 4 items needs the port's build
    result = port_project.run("-k", "mlp-layer0 or model", "-rs", "--junitxml=junit.xml")
    out = result.stdout.str()
    assert result.ret == 1
    assert out.count("\nRuntimeError: attention cannot be built\n") == 1  # once in full
    assert "root cause: KeyError: 'rope_scaling'" in out
    assert "neuron_port/llama/modeling_llama.py:" in out  # the user's frame, named
    result.assert_outcomes(failed=1, skipped=3)  # the shared build fails once; what needs it skips
    shared = "port build and weight conversion failed in component[mlp-layer0] (shown above)"
    statuses = port_project.statuses()
    assert [sid for sid, status in statuses.items() if status == "failed"] == ["component[mlp-layer0]"]
    for sid in ("component[mlp-layer0-bfloat16]", "model", "model[bfloat16]"):
        assert statuses[sid] == "skipped" and port_project.stage(sid)["message"] == shared, sid
    assert "SKIPPED [3] " in out and out.count(shared) >= 4  # the table's three rows and -rs's line
    junit = (port_project.root / "junit.xml").read_text()
    assert junit.count(f'<skipped type="pytest.skip" message="{shared}"') == 3
    table_row = next(line for line in out.splitlines() if line.startswith("component[mlp-layer0] "))
    assert "RuntimeError: attention cannot be built at neuron_port/llama/modeling_llama.py:" in table_row
    assert "site-packages" not in out and "_pytest" not in out
    assert len(out.splitlines()) < 80, out
    first = port_project.stage("component[mlp-layer0]")
    assert first["status"] == "failed"
    assert first["message"].startswith("RuntimeError: attention cannot be built")
    assert "pytest_autoport" in first["traceback"] and "KeyError" in first["traceback"]

    long = port_project.run("-k", "mlp-layer0 and not bfloat16", "--tb=long").stdout.str()
    assert "pytest_autoport" in long and len(long.splitlines()) > len(out.splitlines())


def test_short_failure_names_the_callers_line_and_where_the_library_raised(tmp_path):
    from pytest_autoport.failure_text import short_failure

    try:
        json.loads("{not json")
    except ValueError as exc:
        lines = short_failure(exc, tmp_path).splitlines()
    assert lines[0].startswith("JSONDecodeError: Expecting property name")
    assert lines[1].startswith(f"  {__file__}:") and lines[2].strip() == 'json.loads("{not json")'
    assert lines[3].startswith("  raised in ") and "json/decoder.py" in lines[3]
    assert len(lines) == 5


def test_results_that_cannot_be_written_are_reported_in_one_line(port_project):
    (port_project.root / "agent_artifacts").mkdir()
    (port_project.root / "agent_artifacts" / "results").write_text("a file where the folder should be")
    result = port_project.run("-k", "env")
    out = result.stdout.str() + result.stderr.str()
    assert result.ret != 0
    assert "INTERNALERROR" not in out and "Traceback" not in out
    result.stdout.fnmatch_lines(["results not written: exists but is not a folder: *agent_artifacts/results"])


def _graph(vocab: int, nan_at_position: int | None):
    """A stand-in graph: the next token is (position + 1) mod vocab; NaN logits at one position."""

    def run(input_ids, position_ids):
        logits = torch.nn.functional.one_hot((position_ids + 1) % vocab, vocab).float()
        logits[position_ids == nan_at_position] = float("nan")
        return logits

    return run


def test_nan_in_decode_logits_is_named():
    params = SamplingParams(max_new_tokens=6)

    def run(context_nan_at, token_nan_at):
        graphs = StaticGraphs(
            context={8: _graph(11, context_nan_at)},
            token={16: _graph(11, token_nan_at)},
            reset_cache=lambda: None,
            batch_size=1,
            max_seq_len=16,
        )
        return generate([[1, 2, 3]], params, graphs)

    assert len(run(None, None).tokens[0]) == 6
    with pytest.raises(StageFailure, match=r"NaN/Inf in the logits at decode step 2, bucket 16"):
        run(None, 4)
    with pytest.raises(StageFailure, match=r"NaN/Inf in the logits of context encoding \(bucket 8\)"):
        run(2, None)


NAN_ON_DECODE = (
    "llama/modeling_llama.py",
    "        return self.o_proj(attend(q, keys, values, position_ids, scale=self.head_dim**-0.5))",
    "        out = self.o_proj(attend(q, keys, values, position_ids, scale=self.head_dim**-0.5))\n"
    '        return out + float("nan") if seq == 1 else out  # planted: NaN on the decode path only',
)


def test_planted_nan_on_the_decode_path_is_named_as_nan(port_project):
    port_project.replace(*NAN_ON_DECODE)
    port_project.run("-k", "generate")
    generate_stage = port_project.stage("generate")
    assert generate_stage["status"] == "failed"
    assert "NaN/Inf in the logits at decode step 1" in generate_stage["message"]
    assert "degenerate" not in generate_stage["message"]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")
def test_results_are_written_with_the_users_file_mode(tmp_path):
    previous = os.umask(0o027)
    try:
        write_atomic(tmp_path / "out" / "llama.json", "{}\n")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "out" / "llama.json").stat().st_mode) == 0o640


def test_short_failure_cuts_a_long_message(tmp_path):
    from pytest_autoport.failure_text import MAX_MESSAGE_LINES, short_failure

    report = "\n".join(f"line {i}" for i in range(500))
    lines = short_failure(RuntimeError(report), tmp_path).splitlines()
    assert lines[MAX_MESSAGE_LINES] == f"  ... ({500 - MAX_MESSAGE_LINES} more lines of the message)"
    assert len(lines) < MAX_MESSAGE_LINES + 4
