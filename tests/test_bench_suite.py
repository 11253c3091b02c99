"""The benchmark suite's report writer (bench/suite_table.py): each figure judged against its target,
a failed section reported as such, and both files written. No benchmark runs here."""

from __future__ import annotations

import json

from bench.suite_table import rows, write

GB = 10**9


def report(**changes) -> dict:
    base = {
        "command": "python -m bench --quick",
        "mode": "quick",
        "started_at": "2026-12-01 05:00 UTC",
        "duration_s": 200.0,
        "machine": {
            "cpus": 2,
            "cpu_model": "Test CPU",
            "mem_total_bytes": 24 * GB,
            "torch": "2.13.0",
            "transformers": "5.24.0",
            "omp_num_threads": "1",
            "load_average_before": [1.0, 1.0, 1.0],
            "load_average_after": [2.5, 1.5, 1.0],
        },
        "verdict": {
            "repeats": 3,
            "import_floor_s": 4.0,
            "cold_s": 60.0,
            "cold_over_floor": 15.0,
            "cold_verdict": "PASSED",
            "cold_trained_checkpoint": False,
            "warm_s": 7.9,
            "warm_over_floor": 1.98,
            "warm_verdict": "PASSED",
            "mlp_s": 6.4,
            "mlp_over_floor": 1.6,
            "warm_golden": {"cache": "hit", "hf_seconds": 0.0, "hf_model_loaded": True},
            "cold_golden": {"cache": "miss", "hf_seconds": 0.6, "hf_model_loaded": True},
        },
        "xdist": {"n0_s": 20.0, "n2_s": 12.5, "speedup": 1.6},
        "compile": {"export": {"context_encoding_16": 4.3, "token_generation_32": 3.1}},
        "streaming": {
            "checkpoint_bytes": int(2.2 * GB),
            "budget_bytes": int(0.73 * GB),
            "interpreter_rss_bytes": int(0.4 * GB),
            "whole": {"seconds": 9.0, "peak_rss_bytes": int(2.6 * GB)},
            "streaming": {"seconds": 12.0, "peak_rss_bytes": int(1.2 * GB)},
            "streaming_ratio_raw": 1.64,
            "streaming_ratio_above_interpreter": 1.1,
        },
        "llama_checkpoint": {"parameters": 301_000_000, "checkpoint_bytes": int(1.2 * GB)},
        "golden_cost": {
            "new_tokens": [64] * 10,
            "hf_generate_s": 80.0,
            "teacher_forced_streamed_s": 6.0,
            "streamed_over_generate": 0.075,
            "teacher_forced_whole_s": 3.0,
            "whole_over_generate": 0.0375,
            "hf_decode_tokens_per_s": 8.0,
        },
        "port_decode": {"status": "passed", "message": "", "decode_tokens_per_s": 8.5},
    }
    base.update(changes)
    return base


def by_target(table) -> dict:
    return {r.target: r.status for r in table if r.target}


def test_every_target_judged_against_its_figure():
    judged = by_target(rows(report()))
    assert judged == {
        "<= 2x floor": "pass",  # 1.98
        "<= 1.5x floor": "miss",  # 1.6
        "0 s": "pass",
        "<= 1.5x (largest layer + non-layer = 0.73 GB)": "miss",  # 1.64 raw
        "<= 0.1": "pass",
        ">= HF": "pass",
    }


def test_a_warm_golden_that_spent_hf_time_misses():
    changed = report()
    changed["verdict"]["warm_golden"] = {"cache": "miss", "hf_seconds": 0.4, "hf_model_loaded": True}
    assert by_target(rows(changed))["0 s"] == "miss"


def test_failed_and_absent_sections():
    table = rows(report(streaming={"error": "RuntimeError: killed"}, xdist=None, port_decode=None))
    errors = [r for r in table if r.status == "error"]
    assert [(r.figure, r.value) for r in errors] == [("streaming", "not measured: RuntimeError: killed")]
    assert not any("-n 2" in r.figure for r in table)


def test_a_port_that_did_not_generate_is_not_judged():
    failed = {"status": "failed", "message": "degenerate output", "decode_tokens_per_s": None}
    [row] = [r for r in rows(report(port_decode=failed)) if "decode" in r.figure]
    assert (row.status, row.value) == ("", "not measured: generate failed degenerate output")


def test_write_json_and_markdown(tmp_path):
    json_path, md_path = write(report(), tmp_path / "results")
    saved = json.loads(json_path.read_text())
    assert (
        saved["table"][2]["figure"].startswith("warm full verdict") and saved["table"][2]["status"] == "pass"
    )
    text = md_path.read_text()
    assert "`python -m bench --quick`" in text
    assert "2 x Test CPU, 24.0 GB RAM" in text and "1.00/1.00/1.00 before, 2.50/1.50/1.00 after" in text
    assert "| warm `-k mlp` (median of 3) | 6.4 s = 1.60x floor | <= 1.5x floor | miss |" in text
    assert text.count("\n|") == 2 + len(saved["table"])  # header, separator and one line per row


def test_a_suite_stopped_halfway_says_so(tmp_path):
    _, md_path = write(report(complete=False, lock_wait_s=120.0), tmp_path)
    text = md_path.read_text()
    assert "Incomplete: the suite stopped or is still running." in text
    assert "120 s of it waiting for /tmp/bigmem.lock" in text
