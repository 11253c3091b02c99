"""The weights stage on NxDI: the checkpoint goes through exactly the steps NxDI's loader takes.

NxDI's loader (``NeuronApplicationBase.get_state_dict`` then ``to_cpu()`` / ``load()``): replace the
class's ``_STATE_DICT_MODEL_PREFIX`` by ``_NEW_STATE_DICT_MODEL_PREFIX`` (``model.`` -> ``""`` for
most models, ``language_model.model.`` for Gemma 3), run ``convert_hf_to_neuron_state_dict`` on
that dict (it mutates it and adds runtime tensors such as ``rank_util.rank``), tie the embeddings
where the config says so, then NxD's ``get_sharded_checkpoint``, whose pre-shard hooks rename
``q/k/v_proj`` into ``qkv_proj.*`` and ``o_proj`` into ``o_proj.o_proj`` and cut each tensor for its
rank. The result is compared with the model's own state dict; only the KV cache (``kv_mgr.*``) is
state that no checkpoint fills.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import torch

from ...weight_mapping import ReadTracker, storage_id
from .runtime import nxdi

# NxD's get_sharded_checkpoint warns with this, then the list of keys it drops as unknown to the model
DROPPED_WARNING = "Removing redundant keys from checkpoint:"

RUNTIME_STATE_PREFIXES = ("kv_mgr.",)  # tensors of the model that no checkpoint fills
RUNTIME_STATE_MARKERS = (".kv_mgr.",)


def is_runtime_state(key: str) -> bool:
    return key.startswith(RUNTIME_STATE_PREFIXES) or any(m in key for m in RUNTIME_STATE_MARKERS)


def loader_view(app_cls, hf_state: dict) -> dict:
    """The HF state dict as NxDI's ``get_state_dict`` hands it to the conversion."""
    old = getattr(app_cls, "_STATE_DICT_MODEL_PREFIX", "model.")
    new = getattr(app_cls, "_NEW_STATE_DICT_MODEL_PREFIX", "")
    view = {}
    for key, value in hf_state.items():
        name = new + key[len(old) :] if old and key.startswith(old) else key
        if name.endswith(".weight_scale"):
            name = name[: -len(".weight_scale")] + ".scale"
        view[name] = value
    return view


def wanted_state(model) -> dict:
    """The model tensors the converted checkpoint must fill (everything but the KV cache)."""
    return {key: value for key, value in model.state_dict().items() if not is_runtime_state(key)}


def conversion(app_cls, model, rank: int = 0):
    """``convert(state_dict, config)`` as NxDI's loader runs it, for ``check_mapping``: the port's
    conversion, tied weights, then NxD's sharding for ``rank``.

    ``state_dict`` is check_mapping's mutable read-tracking copy. NxD's pre-shard hooks read (and
    fuse) tensors the port's conversion passed through untouched: those reads are credited to the
    HF tensors they came from. Keys the model lacks are dropped, as NxD drops them ("Removing
    redundant keys": conversions leave copied-from keys behind, e.g. Qwen3's ``q_norm``); a
    misnamed key still shows, as the model tensor it failed to fill."""
    trace = nxdi("neuronx_distributed.trace.trace")

    def convert(state_dict, config):
        origin = {storage_id(t): key for key, t in dict.items(state_dict) if isinstance(t, torch.Tensor)}
        converted = app_cls.convert_hf_to_neuron_state_dict(state_dict, config)
        if converted is None:  # an in-place conversion that forgot to return its dict
            converted = state_dict
        if getattr(config, "tie_word_embeddings", False):
            app_cls.update_state_dict_for_tied_weights(converted)
        before = dict(converted)
        staged = _ShardingTracker(before)
        with warnings.catch_warnings(), _recording_preshard_hooks(trace, staged):
            warnings.filterwarnings("ignore", message=DROPPED_WARNING)
            trace.get_sharded_checkpoint(staged, model, rank, config.neuron_config.tp_degree)
        for key in staged.read:
            tensor = before.get(key)
            if isinstance(tensor, torch.Tensor) and storage_id(tensor) in origin:
                state_dict.read.add(origin[storage_id(tensor)])
        return dict(staged)

    return convert


class _ShardingTracker(ReadTracker):
    """Reads of NxD's pre-shard hooks only (``invoke_preshard_hook``): its duplicate check reads
    every tensor and its clean-up pops the keys the model lacks, neither of which uses a tensor."""

    recording = False

    def __getitem__(self, key):
        return super().__getitem__(key) if self.recording else dict.__getitem__(self, key)

    def get(self, key, default=None):
        return super().get(key, default) if self.recording else dict.get(self, key, default)

    def pop(self, key, *default):
        return super().pop(key, *default) if self.recording else dict.pop(self, key, *default)


@contextmanager
def _recording_preshard_hooks(trace, staged: _ShardingTracker):
    hook = trace.invoke_preshard_hook

    def recorded(module, checkpoint, prefix):  # NxD calls it recursively, through the module global
        outer, staged.recording = staged.recording, True
        try:
            return hook(module, checkpoint, prefix)
        finally:
            staged.recording = outer

    trace.invoke_preshard_hook = recorded
    try:
        yield
    finally:
        trace.invoke_preshard_hook = hook
