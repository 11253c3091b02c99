"""``autoport scaffold --target nxdi`` on real NxDI code (CPU mode): the port scaffolded for a
Llama-shaped model built from config collects, converts its weights through NxDI's loader, and its
components and logits match HF's, with nothing written by hand."""

from __future__ import annotations

import json

import forked_pytest
import pytest


@pytest.mark.slow
def test_scaffolded_llama_nxdi_port_passes_the_cpu_stages(pytester):
    from pytest_autoport.scaffold import scaffold

    tiny = {"num_hidden_layers": 2, "num_key_value_heads": 2}
    spec_file, port_file = scaffold("llama", "my_llama", pytester.path, "nxdi", tiny)
    assert "TODO: tuple[str, ...] = ()" in port_file.read_text()  # nothing left to write
    spec_file.write_text(spec_file.read_text().replace("[tiny]\n", '[tiny]\nweights = "random"\n', 1))
    selection = "not bfloat16 and not sharding and not generate and not golden and not compile"
    result = forked_pytest.runpytest(
        pytester, "--autoport-model=my_llama", "-p", "no:cacheprovider", "-k", selection, "-W", "ignore"
    )
    results = pytester.path / "agent_artifacts" / "results" / "my_llama.partial.json"
    stages = {s["id"]: s for s in json.loads(results.read_text())["stages"]}
    statuses = {sid: s["status"] for sid, s in stages.items()}
    assert "Traceback" not in result.stdout.str()
    assert statuses["weights"] == "passed", stages["weights"]["message"]
    components = [sid for sid in statuses if sid.startswith("component[")]
    assert len(components) == 13  # embedding, norm, lm_head and five per layer
    assert {statuses[sid] for sid in components} == {"passed"}, statuses
    assert statuses["model"] == "passed", stages["model"]["message"]
    assert stages["model"]["figures"]["path"] == "cpu"
