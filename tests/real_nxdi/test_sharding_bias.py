"""sharding[tp=2] on a Llama with MLP biases (HF ``mlp_bias``): the user port adds the row-parallel
``down_proj`` bias once, after NxD's all-reduce, and passes at tp 2; a port that adds it on every
rank before the all-reduce (twice at tp 2, once at tp 1) fails naming the MLP."""

from __future__ import annotations

import re

import pytest
from safetensors.torch import load_file

CORRECT = "        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))\n"
BIAS_ON_EVERY_RANK = """\
        from neuronx_distributed.parallel_layers.mappings import reduce_from_tensor_model_parallel_region

        down = self.down_proj
        partial = F.linear(F.silu(self.gate_proj(x)) * self.up_proj(x), down.weight, down.bias)
        return reduce_from_tensor_model_parallel_region(partial, process_group=down.tensor_parallel_group)
"""


@pytest.mark.slow
def test_sharding_stage_names_a_row_parallel_bias_added_on_every_rank(make_project):
    project = make_project("llama_nxdi_port")
    text = project.spec.read_text()
    text = re.sub(r'weights_path = ".*"', 'weights_path = "agent_artifacts/data/llama_mlp_bias"', text)
    text = text.replace("train_steps = 300\n", "train_steps = 60\nmlp_bias = true\n", 1)
    assert "mlp_bias = true" in text
    project.spec.write_text(text)
    selection = ("-k", "weights or sharding or (mlp and not bfloat16)", "-W", "ignore")

    project.run(*selection)
    statuses = project.statuses()
    assert set(statuses.values()) == {"passed"}, statuses
    assert "sharding[tp=2]" in statuses
    tensors = load_file(project.root / "agent_artifacts/data/llama_mlp_bias/model.safetensors")
    assert tensors["model.layers.0.mlp.down_proj.bias"].abs().max() > 1e-3, "the biases must matter"

    project.replace("llama_nxdi/modeling_llama_nxdi.py", CORRECT, BIAS_ON_EVERY_RANK)
    project.run(*selection)
    statuses = project.statuses()
    assert statuses["component[mlp-layer0]"] == "passed", "at tp 1 the bias is added once"
    assert statuses["sharding[tp=2]"] == "failed"
    stage = project.stage("sharding[tp=2]")
    assert stage["figures"]["first_divergence"] == "layers.0.mlp"
    assert "first module whose tp=2 output differs from tp=1: layers.0.mlp" in stage["message"]
