"""load_program reads back exactly the program torch.export.load reads, and leaves torch as it was."""

from __future__ import annotations

import typing

import torch
from torch._export.serde import serialize

from pytest_autoport.targets.export_load import load_program


class Small(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, x, positions):
        return torch.softmax(self.linear(x) * positions.unsqueeze(-1), dim=-1).to(torch.bfloat16)


def saved_program(tmp_path):
    path = tmp_path / "small.pt2"
    example = (torch.randn(2, 5, 4, generator=torch.Generator().manual_seed(0)), torch.arange(5.0))
    torch.export.save(torch.export.export(Small(), example, strict=False), path)
    return path, example


def test_load_program_reads_the_program_torch_reads(tmp_path):
    path, example = saved_program(tmp_path)
    fast, plain = load_program(path), torch.export.load(path)
    assert serialize.serialize(fast).exported_program == serialize.serialize(plain).exported_program
    assert fast.module()(*example).equal(plain.module()(*example))
    assert serialize.typing is typing


def test_load_program_is_plain_torch_load_when_the_deserializer_changed(tmp_path, monkeypatch):
    import pytest_autoport.targets.export_load as export_load

    path, example = saved_program(tmp_path)
    monkeypatch.setattr(export_load, "_fast_typing", lambda serialize: None)
    assert load_program(path).module()(*example).equal(torch.export.load(path).module()(*example))
