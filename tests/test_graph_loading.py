"""Compiled graphs are read when first run."""

from __future__ import annotations

import torch

from pytest_autoport.targets import graph_loading
from pytest_autoport.targets.base import CompileResult


class TwoLayer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(4, 8)
        self.b = torch.nn.Linear(8, 3)

    def forward(self, x):
        return self.b(torch.nn.functional.silu(self.a(x)))


def exported(tmp_path, names) -> CompileResult:
    torch.manual_seed(0)
    module = TwoLayer()
    program = torch.export.export(module, (torch.randn(2, 4),))
    for name in names:
        torch.export.save(program, tmp_path / f"{name}.pt2")
    return CompileResult(graphs={name: f"{name}.pt2" for name in names})


def test_graphs_are_loaded_on_first_use_only(tmp_path, monkeypatch):
    result = exported(tmp_path, ["context_encoding_16", "context_encoding_32", "token_generation_32"])
    read = []
    real_load = torch.export.load
    monkeypatch.setattr(torch.export, "load", lambda path: read.append(path.name) or real_load(path))

    graphs = graph_loading.load_exported(tmp_path, result, {}, {})
    assert sorted(graphs) == sorted(result.graphs) and len(graphs) == 3
    assert read == []  # listing the buckets reads nothing

    x = torch.randn(2, 4)
    first = graphs["context_encoding_32"](x)
    again = graphs["context_encoding_32"](x)
    assert read == ["context_encoding_32.pt2"] and graphs.loaded == ["context_encoding_32"]
    assert torch.equal(first, again)
    try:
        graphs["context_encoding_64"]
    except KeyError:
        pass
    else:
        raise AssertionError("an unknown graph name must raise KeyError")


def test_generation_is_timed_with_every_graph_already_read(tmp_path, monkeypatch):
    """ttft and tokens/s must not include reading a graph from disk."""
    from types import SimpleNamespace

    from pytest_autoport.targets import torch_target

    result = exported(tmp_path, ["context_encoding_16", "token_generation_32"])
    graphs = graph_loading.load_exported(tmp_path, result, {}, {})
    spec = SimpleNamespace(port=SimpleNamespace(batch_size=1, max_seq_len=32))
    seen = []
    monkeypatch.setattr(torch_target, "generate", lambda prompts, params, static: seen.append(graphs.loaded))
    torch_target.TorchCompiledModel(spec, graphs, {}).generate([[1, 2]], None)
    assert sorted(seen[0]) == ["context_encoding_16", "token_generation_32"]
