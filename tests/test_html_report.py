"""The HTML report: built from a results JSON alone, self-contained (no network), every text escaped,
and rendered by a real headless browser."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time

import pytest
import torch

from pytest_autoport.html_report import render, report_path, write_html_report

HOSTILE = "<script>alert('x')</script> & \"quotes\""


@pytest.fixture(scope="module")
def failed_run(tmp_path_factory):
    """A results JSON shaped as the plugin writes it for a port whose attention is wrong, with one plot."""
    from pytest_autoport.plots import save_error_plots

    results = tmp_path_factory.mktemp("report") / "results"
    plot = results / "plots" / "llama-component-attention-0-fp32.png"
    generator = torch.Generator().manual_seed(0)
    expected = torch.randn(256, generator=generator)
    save_error_plots(plot, expected + 0.1 * torch.randn(256, generator=generator), expected, title=plot.stem)
    stale = results / "plots" / "llama-old-fp32.png"
    shutil.copy(plot, stale)
    old = time.time() - 3600
    os.utime(stale, (old, old))
    localisation = [
        {"order": 0, "module": "model.embed_tokens", "component": "embedding", "rel_fro": 0.0, "ok": True},
        {
            "order": 1,
            "module": "model.layers.0.self_attn",
            "component": "attention",
            "rel_fro": 0.38,
            "ok": False,
        },
    ]
    stage = {"nodeid": "", "duration_s": 0.5, "message": "", "traceback": ""}
    verdict = {
        "schema_version": 1,
        "model": "llama",
        "spec": "port_specs/llama.toml",
        "target": "torch",
        "dtype": "float32",
        "dry_run": False,
        "passed": False,
        "weights": {"kind": "tiny-trained", "path": "/data/llama"},
        "versions": {"torch": "2.13", "transformers": "5.24", "pytest_autoport": "0.1.0"},
        "error": "",
        "started_at": time.time() - 30,
        "duration_s": 30.0,
        "warnings": [f"a warning with {HOSTILE}"],
        "stages": [
            {**stage, "stage": "env", "id": "env", "status": "passed", "figures": {"torch": "2.13"}},
            {
                **stage,
                "stage": "component",
                "id": "component[attention-layer0]",
                "status": "failed",
                "figures": {"mode": "fp32", "rel_fro": 0.38, "max_abs": 0.07, "plot": str(plot)},
                "message": "attention (layer 0) differs from HF in FP32: relative Frobenius error 0.381",
            },
            {
                **stage,
                "stage": "model",
                "id": "model",
                "status": "failed",
                "figures": {
                    "rel_fro": 0.23,
                    "first_divergence": "model.layers.0.self_attn",
                    "localisation": localisation,
                },
                "message": "model logits differ\nfirst divergent module: model.layers.0.self_attn",
            },
            {**stage, "stage": "compile", "id": "compile", "status": "passed", "figures": {"key": "abc123"}},
            {
                **stage,
                "stage": "generate",
                "id": "generate",
                "status": "passed",
                "figures": {"texts": [f"the port wrote {HOSTILE}", "Wednesday, Thursday"]},
            },
            {
                **stage,
                "stage": "golden",
                "id": "golden",
                "status": "failed",
                "message": "greedy token match 50.0% is below the threshold 95%",
                "figures": {
                    "mode": "token",
                    "token_match": 0.5,
                    "teacher_forced_match": 0.75,
                    "threshold": 0.95,
                    "matched": 4,
                    "total": 8,
                    "first_divergence": [2, None],
                    "divergences": [
                        {
                            "prompt": 0,
                            "position": 2,
                            "golden_token": 11,
                            "port_token": 12,
                            "golden_text": " stairs",
                            "port_text": "<b>",
                            "golden_margin": 0.5,
                            "port_token_in_golden_top5": True,
                        }
                    ],
                    "free_running_divergences": [
                        {
                            "prompt": 0,
                            "position": 2,
                            "golden_token": 11,
                            "port_token": 12,
                            "golden_margin": 0.5,
                        }
                    ],
                },
            },
        ],
    }
    json_path = results / "llama.json"
    json_path.write_text(json.dumps(verdict))
    return json_path, verdict, plot


def test_report_is_self_contained_and_escaped(failed_run):
    json_path, verdict, plot = failed_run
    page = write_html_report(verdict, report_path(json_path)).read_text()
    assert report_path(json_path).name == "llama.html"
    assert "id='stages'" in page and page.count("<tr") > 10
    assert "component[attention-layer0]" in page and "abc123" in page and "2.13" in page
    assert "first divergent module: <b><code>model.layers.0.self_attn</code></b>" in page
    assert "class='first'" in page  # the localisation row of the first divergent module
    assert "Decode-step error profile" in page and "cell real first" in page
    assert page.count("data:image/png;base64,") == 1  # the run's plot; the stale one is left out
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert not re.search(r"(src|href)=['\"]?(https?:)?//", page)


def test_report_of_an_empty_or_old_results_file_renders():
    page = render({"model": "x", "passed": False, "error": "spec invalid <here>", "stages": []})
    assert "spec invalid &lt;here&gt;" in page and "id='stages'" in page


def test_report_renders_in_a_headless_browser(failed_run, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no chromium on PATH (apt-get install chromium)")
    json_path, verdict, _ = failed_run
    page = write_html_report(verdict, report_path(json_path))
    flags = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    shot = tmp_path / "report.png"
    subprocess.run(
        [*flags, f"--screenshot={shot}", "--window-size=1200,2000", page.as_uri()],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    dom = subprocess.run(
        [*flags, "--dump-dom", page.as_uri()], check=True, capture_output=True, text=True, timeout=120
    ).stdout
    assert 'id="stages"' in dom and "component[attention-layer0]" in dom
