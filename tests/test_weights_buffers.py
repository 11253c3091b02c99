"""A port's persistent buffers that the conversion does not fill (RoPE tables it computes itself) keep the
value the port built them with: the weights stage lists them and does not fail; a parameter the
conversion leaves unfilled still fails it, by name."""

from __future__ import annotations

import torch
from torch import nn

from pytest_autoport.weight_mapping import check_mapping

PERSISTENT_ROPE_TABLE = (
    "blocks/rope.py",
    'self.register_buffer("inv_freq", inv_freq, persistent=False)',
    'self.register_buffer("inv_freq", inv_freq)',
)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(2, 2)
        self.register_buffer("table", torch.arange(3.0))


def test_an_unfilled_buffer_is_kept_and_an_unfilled_parameter_is_missing():
    port = Tiny()
    hf = {"proj.weight": torch.ones(2, 2), "proj.bias": torch.zeros(2)}
    buffers = frozenset(name for name, _ in port.named_buffers())
    report = check_mapping(lambda state, config: dict(state), hf, None, port.state_dict(), buffers)
    assert report.ok and report.kept_buffers == ["table"]
    assert torch.equal(report.converted["table"], torch.arange(3.0))
    assert report.figures(2, 3)["kept_buffers"] == ["table"]
    port.load_state_dict(report.converted, strict=True)
    without_bias = check_mapping(
        lambda state, config: {"proj.weight": state["proj.weight"]}, hf, None, port.state_dict(), buffers
    )
    assert without_bias.missing == ["proj.bias"] and "proj.bias" in without_bias.message()


def test_a_port_with_persistent_rope_tables_passes(port_project):
    port_project.replace(*PERSISTENT_ROPE_TABLE, what="RoPE inverse frequencies registered as persistent")
    port_project.run("-k", "weights or attention-layer0 or model", "--autoport-dtype=float32")
    statuses = port_project.statuses()
    assert set(statuses.values()) == {"passed"}, statuses
    kept = port_project.stage("weights")["figures"]["kept_buffers"]
    assert kept == [f"model.layers.{i}.self_attn.rotary.inv_freq" for i in (0, 1)]
