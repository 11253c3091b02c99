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


def test_checkpoint_tensors_transformers_drops_on_load_are_left_out(port_project, tiny_weights):
    """An older checkpoint's per-layer ``rotary_emb.inv_freq`` tensors: transformers drops them on load,
    so the weights stage leaves them out of the mapping too, and lists them."""
    import re
    import shutil

    from safetensors.torch import load_file, save_file

    folder = port_project.root / "old_checkpoint"
    shutil.copytree(tiny_weights("llama"), folder)
    (folder / "autoport_tiny.json").unlink()  # the user's own checkpoint now
    state = load_file(folder / "model.safetensors")
    state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    port_project.spec.write_text(
        re.sub(r'weights_path = ".*"', f'weights_path = "{folder}"', port_project.spec.read_text())
    )
    port_project.run("-k", "weights", "--autoport-dtype=float32")
    weights = port_project.stage("weights")
    assert weights["status"] == "passed", weights.get("message")
    assert weights["figures"]["hf_keys_ignored"] == ["model.layers.0.self_attn.rotary_emb.inv_freq"]


def test_a_tensor_the_checkpoint_lacks_is_told_apart_from_a_conversion_fault(port_project, tiny_weights):
    import re
    import shutil

    from safetensors.torch import load_file, save_file

    folder = port_project.root / "incomplete_checkpoint"
    shutil.copytree(tiny_weights("llama"), folder)
    (folder / "autoport_tiny.json").unlink()
    state = load_file(folder / "model.safetensors")
    del state["model.layers.1.post_attention_layernorm.weight"]
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    original = port_project.spec.read_text()
    port_project.spec.write_text(re.sub(r'weights_path = ".*"', f'weights_path = "{folder}"', original))
    port_project.run("-k", "weights", "--autoport-dtype=float32")
    message = port_project.stage("weights")["message"]
    assert (
        "port tensors the conversion did not fill (1):\n    model.layers.1.post_attention_layernorm.weight"
        in message
    )
    assert (
        "the checkpoint itself lacks 1 tensor(s) LlamaForCausalLM has (transformers would initialise them at "
        "random): model.layers.1.post_attention_layernorm.weight"
    ) in message
    port_project.spec.write_text(original)  # the whole checkpoint, a conversion that drops a tensor
    port_project.replace(
        "llama/modeling_llama.py",
        "        return converted\n",
        '        del converted["model.norm.weight"]\n        return converted\n',
    )
    port_project.run("-k", "weights", "--autoport-dtype=float32")
    message = port_project.stage("weights")["message"]
    assert "did not fill (1):\n    model.norm.weight" in message and "checkpoint itself lacks" not in message
