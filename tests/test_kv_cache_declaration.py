"""KV caches are declared by the port (``kv_cache_names``), the ``_cache`` suffix only a fallback, and the
``weights`` stage checks the declaration against what one context-encoding step writes. A buffer that
is not a cache is never zeroed or shared."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pytest_autoport.errors import StageFailure
from pytest_autoport.kv_cache import check_declaration, kv_cache_buffers, reset_kv_cache, written_buffers

# -- unit level ----------------------------------------------------------------------------------------


class Store(nn.Module):
    def __init__(self, declare=True):
        super().__init__()
        self.register_buffer("keys", torch.zeros(4))
        self.register_buffer("mask_cache", torch.ones(4))  # a constant table, not a cache
        if declare:
            self.kv_cache_names = ("keys",)

    def forward(self, x):
        self.keys.copy_(x)
        return x * self.mask_cache


def test_declared_caches_replace_the_suffix_and_nothing_else_is_zeroed():
    module = nn.Sequential(Store())
    assert list(kv_cache_buffers(module)) == ["0.keys"]
    module(torch.arange(4.0))
    reset_kv_cache(module)
    assert module[0].keys.tolist() == [0.0] * 4
    assert module[0].mask_cache.tolist() == [1.0] * 4


def test_without_a_declaration_the_suffix_picks_the_caches():
    assert list(kv_cache_buffers(nn.Sequential(Store(declare=False)))) == ["0.mask_cache"]


def test_written_buffers_are_observed_and_restored():
    module = Store()
    assert written_buffers(module, lambda: module(torch.arange(4.0))) == ["keys"]
    assert module.keys.tolist() == [0.0] * 4


def test_the_declaration_check_names_the_buffer_either_way():
    with pytest.raises(
        StageFailure, match=r"buffer 'mask_cache' is a KV cache \(picked by the '_cache' name"
    ):
        check_declaration(Store(declare=False), written=["keys"])
    with pytest.raises(StageFailure, match=r"buffer 'keys' is written by the forward pass but is not a KV"):
        check_declaration(Store(declare=False), written=["keys", "mask_cache"])
    assert check_declaration(Store(), written=["keys"])["kv_cache_buffers"] == ["keys"]


def test_a_declaration_must_name_a_buffer():
    module = Store()
    module.kv_cache_names = ("kees",)
    with pytest.raises(StageFailure, match=r"Store.kv_cache_names names 'kees', which is not a buffer"):
        kv_cache_buffers(module)


# -- the verdict on copies of the bundled Llama port ----------------------------------------------------

ATTENTION = "blocks/attention.py"
LLAMA = "llama/modeling_llama.py"
MASK_TABLE = (
    "        self.cache = KVCache(nc.batch_size, self.num_kv_heads, nc.max_seq_len, self.head_dim)\n",
    "        self.cache = KVCache(nc.batch_size, self.num_kv_heads, nc.max_seq_len, self.head_dim)\n"
    '        self.register_buffer("mask_cache", torch.ones(nc.max_seq_len, nc.max_seq_len).tril(), persistent=False)\n',
)
MASK_USE = (
    "        return self.o_proj(attend(q, keys, values, position_ids, scale=self.head_dim**-0.5))",
    "        return self.o_proj(attend(q, keys, values, position_ids, scale=self.head_dim**-0.5)) * self.mask_cache[0, 0]",
)


def rename_caches(project, declare: bool):
    """KVCache's buffers renamed to ``keys_store`` / ``values_store`` (declared or not)."""
    path = project.source_path(ATTENTION)
    text = path.read_text()
    for old, new in (("k_cache", "keys_store"), ("v_cache", "values_store")):
        text = text.replace(f'"{old}"', f'"{new}"').replace(f"self.{old}", f"self.{new}")
    if not declare:
        text = text.replace('    kv_cache_names = ("keys_store", "values_store")\n', "")
    path.write_text(text)


def plant_mask_table(project, declare_caches: bool):
    project.replace(
        LLAMA, "import torch.nn.functional as F\n", "import torch\nimport torch.nn.functional as F\n"
    )
    project.replace(LLAMA, *MASK_TABLE, what="mask table")
    project.replace(LLAMA, *MASK_USE, what="mask table use")
    if not declare_caches:
        project.replace(ATTENTION, '    kv_cache_names = ("k_cache", "v_cache")\n', "", what="no declaration")


def test_renamed_declared_caches_pass_the_verdict(port_project):
    rename_caches(port_project, declare=True)
    result = port_project.run("-k", "weights or model or compile or generate or golden")
    result.assert_outcomes(passed=6)
    assert (
        port_project.stage("weights")["figures"]["kv_cache_buffers"][0]
        == "model.layers.0.self_attn.cache.keys_store"
    )
    assert port_project.stage("golden")["figures"]["token_match"] >= 0.95


def test_renamed_undeclared_caches_fail_at_weights_naming_the_buffer(port_project):
    rename_caches(port_project, declare=False)
    result = port_project.run("-k", "weights")
    result.assert_outcomes(failed=1)
    message = port_project.stage("weights")["message"]
    assert "buffer 'model.layers.0.self_attn.cache.keys_store' is written by the forward pass" in message
    assert "kv_cache_names" in message


def test_a_constant_mask_cache_is_not_zeroed_when_the_caches_are_declared(port_project):
    plant_mask_table(port_project, declare_caches=True)
    result = port_project.run("-k", "weights or model")
    result.assert_outcomes(passed=3)
    assert port_project.stage("model[bfloat16]")["figures"]["r"] < 1.2


def test_an_undeclared_constant_mask_cache_fails_at_weights_naming_it(port_project):
    plant_mask_table(port_project, declare_caches=False)
    result = port_project.run("-k", "weights")
    result.assert_outcomes(failed=1)
    message = port_project.stage("weights")["message"]
    assert "buffer 'model.layers.0.self_attn.mask_cache' is a KV cache (picked by the '_cache'" in message
    assert "never writes it" in message
