"""The ``hygiene`` stage: porting rules on the port's syntax tree, silent on every bundled port."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import bundled_specs

REPO = Path(__file__).resolve().parents[1]

BAD_PORT = """\
import torch
import torch.nn.functional as F
from transformers_neuronx import llama


class NeuronLlamaMLP(torch.nn.Module):
    pass


class FastThing(torch.nn.Module):
    pass


class Documented(torch.nn.Module):
    \"\"\"HF has no such class: the port fuses two of its modules.\"\"\"


def load():
    try:
        return 1
    except:
        print("failed")
    F.silu = torch.relu
    setattr(torch.nn, "Linear", None)


if __name__ == "__main__":
    print(load())  # the file run as a script: its own output
"""


def test_each_rule_names_file_and_line(tmp_path):
    from pytest_autoport.hygiene import check_file

    port = tmp_path / "modeling.py"
    port.write_text(BAD_PORT)
    found = [(v.line, v.rule) for v in check_file(port, {"LlamaMLP", "LlamaModel"})]
    assert found == [
        (3, "transformers-neuronx"),
        (10, "class-name"),
        (21, "bare-except"),
        (22, "print"),
        (23, "monkeypatch"),
        (24, "monkeypatch"),
    ]
    assert check_file(port, {"LlamaMLP"})[0].format(tmp_path) == (
        "modeling.py:3: [transformers-neuronx] imports transformers_neuronx: use NxD Inference"
    )


@pytest.mark.parametrize("name", [p.stem for p in bundled_specs()])
def test_every_bundled_port_is_clean(name):
    from pytest_autoport.hygiene import check_port, hf_class_names
    from pytest_autoport.spec import load_spec
    from pytest_autoport.stages.compile import _python_files

    spec = load_spec(REPO / "port_specs" / f"{name}.toml", REPO, check_imports=False)
    files = _python_files(spec.port_class_file.parent)
    assert check_port(files, hf_class_names(spec.model.hf_model_class), spec.hygiene) == []


def test_a_waiver_needs_a_known_rule_and_a_reason(tmp_path):
    from pytest_autoport.errors import SpecError
    from pytest_autoport.spec import load_spec

    text = (REPO / "port_specs" / "llama.toml").read_text()
    spec_file = tmp_path / "llama.toml"
    spec_file.write_text(text + '\n[hygiene]\nprint = ""\n')
    with pytest.raises(SpecError, match=r"field 'hygiene.print': a waived rule needs a written reason"):
        load_spec(spec_file, REPO, check_imports=False)
    spec_file.write_text(text + '\n[hygiene]\nprints = "x"\n')
    with pytest.raises(SpecError, match=r"field 'hygiene.prints': unknown rule"):
        load_spec(spec_file, REPO, check_imports=False)
    spec_file.write_text(text + '\n[hygiene]\nprint = "the port reports progress on the terminal"\n')
    assert load_spec(spec_file, REPO, check_imports=False).hygiene == {
        "print": "the port reports progress on the terminal"
    }


def test_hygiene_stage_fails_a_port_that_prints(port_project):
    port_project.replace(
        "llama/modeling_llama.py",
        "        return converted\n",
        "        print('converted')\n        return converted\n",
    )
    result = port_project.run("--autoport-dry-run", "-k", "hygiene or preflight or weights")
    statuses = port_project.statuses()
    assert statuses["hygiene"] == "failed" and statuses["preflight"] == "passed"
    message = port_project.stage("hygiene")["message"]
    assert "neuron_port/llama/modeling_llama.py:" in message and "[print]" in message
    assert result.ret == 1
