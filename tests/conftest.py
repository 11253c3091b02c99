"""Fixtures for the harness's own tests: a copy of the bundled Llama port in a pytester folder,
with an optional planted bug, and one shared tiny checkpoint so no test materialises its own."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# name -> (file inside neuron_port/, text in the correct port, text with the bug)
PLANTED_BUGS = {
    "rope_theta": (
        "llama/modeling_llama.py",
        "theta, scaling = rope_parameters(config)",
        "theta, scaling = 10000.0, None",
    ),
    "swapped_gate_up": (
        "llama/modeling_llama.py",
        "F.silu(self.gate_proj(x)) * self.up_proj(x)",
        "F.silu(self.up_proj(x)) * self.gate_proj(x)",
    ),
    "missing_residual": (
        "llama/modeling_llama.py",
        "return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))",
        "return self.mlp(self.post_attention_layernorm(hidden_states))",
    ),
    "wrong_weight_key": (
        "llama/modeling_llama.py",
        '        return converted\n',
        '        converted["model.layers.0.self_attn.q_proj.weight"] = state_dict["model.layers.1.self_attn.q_proj.weight"]\n'
        "        return converted\n",
    ),
    "layernorm_for_rmsnorm": (
        "common/norms.py",
        "x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)",
        "x = (x - x.mean(-1, keepdim=True)) * torch.rsqrt(x.var(-1, keepdim=True, unbiased=False) + self.eps)",
    ),
}


@pytest.fixture(scope="session")
def tiny_llama_weights(tmp_path_factory) -> Path:
    from pytest_autoport.checkpoint import resolve_weights
    from pytest_autoport.spec import load_spec

    spec = load_spec(REPO / "port_specs" / "llama.toml", REPO, check_imports=False)
    folder = tmp_path_factory.mktemp("weights") / "llama"
    spec = dataclasses.replace(spec, model=dataclasses.replace(spec.model, weights_path=str(folder)))
    return resolve_weights(spec).path


class PortProject:
    """A throwaway project folder holding the bundled port, for running the plugin with pytester."""

    def __init__(self, pytester: pytest.Pytester, weights: Path):
        self.pytester = pytester
        self.root = pytester.path
        shutil.copytree(REPO / "neuron_port", self.root / "neuron_port", ignore=shutil.ignore_patterns("__pycache__"))
        (self.root / "port_specs").mkdir()
        spec_text = (REPO / "port_specs" / "llama.toml").read_text()
        spec_text = re.sub(r'weights_path = ".*"', f'weights_path = "{weights}"', spec_text)
        self.spec = self.root / "port_specs" / "llama.toml"
        self.spec.write_text(spec_text)

    def plant(self, bug: str) -> None:
        file, correct, buggy = PLANTED_BUGS[bug]
        path = self.root / "neuron_port" / file
        text = path.read_text()
        assert correct in text, f"{bug}: the text to replace is no longer in {file}"
        path.write_text(text.replace(correct, buggy, 1))

    def edit_spec(self, old: str, new: str) -> None:
        text = self.spec.read_text()
        assert old in text
        self.spec.write_text(text.replace(old, new, 1))

    def run(self, *args: str) -> pytest.RunResult:
        return self.pytester.runpytest("--autoport-model=llama", "-p", "no:cacheprovider", *args)

    def results(self) -> dict:
        return json.loads((self.root / "agent_artifacts" / "results" / "llama.json").read_text())

    def statuses(self) -> dict[str, str]:
        return {s["id"]: s["status"] for s in self.results()["stages"]}


@pytest.fixture(scope="session")
def _torch_export_loaded(tmp_path_factory):
    """Import torch.export's lazy modules once in this process. pytester's in-process runs drop the
    modules a run imported; torch cannot register some of them twice, so they must predate the runs."""
    import torch

    class Tiny(torch.nn.Module):
        def forward(self, x):
            return x + 1

    path = tmp_path_factory.mktemp("export") / "tiny.pt2"
    torch.export.save(torch.export.export(Tiny(), (torch.ones(1),)), path)
    torch.export.load(path).module()(torch.ones(1))


@pytest.fixture
def port_project(pytester, tiny_llama_weights, _torch_export_loaded) -> PortProject:
    return PortProject(pytester, tiny_llama_weights)
