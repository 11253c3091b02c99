"""Stand-in for ``neuronx_distributed_inference.models.model_base`` (contract tests only).

``NeuronBaseForCausalLM`` keeps the real one's outline: a context-encoding and a token-generation
model wrapper sharing one ``NeuronBaseModel`` after ``to_cpu()`` or ``load()``; ``compile()`` saves the
config, empties the compiler work dir (``BASE_COMPILE_WORK_DIR``), writes HLO and a compiler log
there, then ``model.pt``; ``to_cpu()`` and ``load()`` load ``model.safetensors`` from the model path when there is one (prefix
``model.`` stripped, the port's conversion, ``load_state_dict(strict=False)``); ``forward()`` pads to
the context bucket and returns only the logits of the
largest position id. The "compiled" model is the same eager toy model: nothing is compiled.

The toy model is a causal LM: each token gets a signal of its position id and adds the mean of
the states it may see, kept in a KV cache per seq id as NxDI keeps it (context encoding writes
slots 0..n-1 and is causal, ignoring the mask with right padding; token generation writes slot
``position_ids`` and reads the cached slots where the mask is 1, plus itself). So wrong positions,
masks or padding change the logits, as they would on NxDI. ``forward`` records every argument.

Behaviour copied from real NxDI 0.9 (seen running it in CPU mode): the bucket is the first one
strictly longer than the attention mask (or the largest when the input fills it exactly);
context-encoding padding gets position id 1, so a one-token context encoding returns a padding
position; CPU mode builds one model whose context-encoding mask has ``seq_len`` positions, so a
context bucket shorter than ``seq_len`` fails there with a tensor size mismatch.
"""

import os
import shutil
from dataclasses import dataclass

import _standin_log
import torch
from torch import nn

COMPILED_MODEL_FILE_NAME = "model.pt"


@dataclass
class CausalLMOutput:
    logits: torch.Tensor


class NeuronBaseModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.neuron_config = config.neuron_config
        self.vocab_size = config.vocab_size
        self.setup_attr_for_model(config)
        self.init_model(config)

    def setup_attr_for_model(self, config):
        raise NotImplementedError("setup_attr_for_model() is not implemented")

    def init_model(self, config):
        raise NotImplementedError("init_model() is not implemented")

    def forward(self, input_ids, attention_mask, position_ids, seq_ids, sampling_params=None):
        hidden = self.embed_tokens(input_ids)
        hidden = hidden + position_signal(position_ids, self.config.hidden_size).to(hidden.dtype)
        hidden = self._attend(hidden, attention_mask, position_ids, seq_ids)
        for layer in self.layers:
            hidden = layer(hidden, attention_mask, position_ids)[0]
        hidden = self.norm(hidden)
        last = torch.max(position_ids, dim=1).indices  # as NxDI: the largest position id
        hidden = hidden[torch.arange(hidden.shape[0]), last][:, None]
        return self.lm_head(hidden).float()

    def _attend(self, hidden, attention_mask, position_ids, seq_ids):
        """The toy attention: each position adds the mean of the states it may see, read through a
        KV cache kept as NxDI keeps it (one line per seq id, slot = position).

        Context encoding (more than one token) writes slots 0..n-1 and is causal; with right
        padding it ignores the mask, as NxDI's ``_create_context_attn_mask`` does. Token generation
        writes slot ``position_ids`` and sees the cached slots where the mask is 1 (the mask is
        read over the cache, NxDI's ``_create_simple_attn_mask``) plus the active token."""
        nc = self.neuron_config
        if getattr(self, "_kv_cache", None) is None:
            self._kv_cache = torch.zeros(nc.batch_size, nc.seq_len, hidden.shape[-1], dtype=hidden.dtype)
        cache = self._kv_cache
        batch, length = hidden.shape[:2]
        if length > 1:
            visible = torch.ones(length, length, dtype=torch.bool).tril().expand(batch, length, length)
            if nc.padding_side != "right":
                visible = visible & attention_mask[:, None, :].bool()
            context = visible.to(hidden.dtype) @ hidden / visible.sum(-1, keepdim=True).clamp(min=1)
            cache[seq_ids, :length] = hidden.detach()
            return hidden + context
        mask = nn.functional.pad(attention_mask, (0, nc.seq_len - attention_mask.shape[1])).to(hidden.dtype)
        past = cache[seq_ids]
        context = (mask[:, :, None] * past).sum(1, keepdim=True) + hidden
        context = context / (mask.sum(1) + 1)[:, None, None]
        cache[seq_ids, position_ids[:, 0]] = hidden[:, 0].detach()
        return hidden + context


def position_signal(position_ids, size):
    """A fixed, parameter-free signal of each position (what rotary embeddings are to a real model)."""
    frequencies = torch.arange(1, size + 1, dtype=torch.float32) * 0.37
    return 0.5 * torch.sin((position_ids[..., None].float() + 1) * frequencies)


def _target_bucket(length, buckets):
    for bucket in buckets:
        if length < bucket:
            return bucket
    if length == buckets[-1]:
        return buckets[-1]
    raise ValueError(f"Input len {length} exceeds largest bucket ({buckets[-1]})")


class ModelWrapper:
    def __init__(self, tag, model_cls, config):
        self.tag = tag
        self.model_cls = model_cls
        self.config = config
        self.model = None


class NeuronBaseForCausalLM(nn.Module):
    _model_cls = None

    def __init__(self, model_path, config=None, neuron_config=None):
        super().__init__()
        _standin_log.record("app.__init__", cls=type(self).__name__, model_path=str(model_path))
        if config is None:
            config = self.get_config_cls().load(model_path)
        self.config = config
        self.neuron_config = config.neuron_config
        self.model_path = str(model_path)
        self.on_cpu = False
        self.kv_cache_populated = False
        self.context_encoding_model = ModelWrapper("context_encoding_model", self._model_cls, config)
        self.token_generation_model = ModelWrapper("token_generation_model", self._model_cls, config)
        self.models = [self.context_encoding_model, self.token_generation_model]

    @classmethod
    def get_config_cls(cls):
        raise NotImplementedError("get_config_cls is not implemented")

    def get_compiler_args(self):
        _standin_log.record("app.get_compiler_args")
        return None

    _STATE_DICT_MODEL_PREFIX = "model."

    def _build_model(self):
        torch.manual_seed(0)  # without a checkpoint file: the same weights every time
        model = self._model_cls(self.config).to(self.neuron_config.torch_dtype).eval()
        checkpoint = os.path.join(self.model_path, "model.safetensors")
        if os.path.isfile(checkpoint):  # as NxDI: strip the model prefix, convert, load (not strict)
            from safetensors.torch import load_file

            state = {
                k.removeprefix(self._STATE_DICT_MODEL_PREFIX): v for k, v in load_file(checkpoint).items()
            }
            state = self.convert_hf_to_neuron_state_dict(state, self.config)
            result = model.load_state_dict(state, strict=False)
            _standin_log.record("load checkpoint", missing=list(result.missing_keys))
        for wrapper in self.models:
            wrapper.model = model

    def to_cpu(self):
        os.environ["NXD_CPU_MODE"] = "1"
        _standin_log.record("app.to_cpu", tp_degree=self.neuron_config.tp_degree)
        if self.neuron_config.torch_dtype == torch.float16:
            raise NotImplementedError("float16 is not supported for CPU inference")
        self.on_cpu = True
        self._build_model()

    def compile(self, compiled_model_path, debug=False):
        workdir = os.environ.get("BASE_COMPILE_WORK_DIR", "/tmp/nxd_model/")
        self.config.save(compiled_model_path)
        if os.path.exists(workdir):
            shutil.rmtree(workdir)
        graph_dir = os.path.join(workdir, "context_encoding_model", "_tp0_bk0")
        os.makedirs(graph_dir)
        with open(os.path.join(graph_dir, "model.hlo_module.pb"), "wb") as f:
            f.write(b"stand-in hlo")
        with open(os.path.join(graph_dir, "log-neuron-cc.txt"), "w") as f:
            f.write("stand-in compiler log\n")
        _standin_log.record(
            "app.compile",
            path=str(compiled_model_path),
            NEURON_CC_FLAGS=os.environ.get("NEURON_CC_FLAGS"),
            BASE_COMPILE_WORK_DIR=workdir,
        )
        with open(os.path.join(compiled_model_path, COMPILED_MODEL_FILE_NAME), "wb") as f:
            f.write(b"stand-in traced model")

    def load(self, compiled_model_path, start_rank_id=None, local_ranks_size=None, skip_warmup=False):
        _standin_log.record("app.load", path=str(compiled_model_path))
        if not os.path.isfile(os.path.join(compiled_model_path, COMPILED_MODEL_FILE_NAME)):
            raise FileNotFoundError(f"no {COMPILED_MODEL_FILE_NAME} in {compiled_model_path}")
        self._build_model()

    def reset(self):
        _standin_log.record("app.reset")
        self.kv_cache_populated = False

    def forward(
        self,
        input_ids=None,
        seq_ids=None,
        attention_mask=None,
        position_ids=None,
        sampling_params=None,
        **kwargs,
    ):
        kind = "context_encoding" if int(position_ids.min()) == 0 else "token_generation"
        _standin_log.record(
            "app.forward",
            kind=kind,
            shape=tuple(input_ids.shape),
            input_ids=input_ids.clone(),
            attention_mask=None if attention_mask is None else attention_mask.clone(),
            position_ids=position_ids.clone(),
            seq_ids=None if seq_ids is None else seq_ids.clone(),
            sampling_params=None if sampling_params is None else sampling_params.clone(),
        )
        batch, length = input_ids.shape
        size = self.neuron_config.batch_size
        if seq_ids is None:  # as NxDI
            seq_ids = torch.arange(batch)
        if kind == "context_encoding":
            nc = self.neuron_config
            buckets = nc.context_encoding_buckets or [nc.max_context_length or nc.seq_len]
            bucket = _target_bucket(attention_mask.shape[1], buckets)
            if self.on_cpu and bucket != nc.seq_len:
                raise RuntimeError(
                    f"The size of tensor a ({nc.seq_len}) must match the size of tensor b ({bucket}) "
                    "at non-singleton dimension 3"
                )
            pad = bucket - length
            input_ids = nn.functional.pad(input_ids, (0, pad))
            position_ids = nn.functional.pad(position_ids, (0, pad), value=1)
            attention_mask = nn.functional.pad(attention_mask, (0, pad))
        if batch < size:  # fill the static batch, as the real model wrapper does
            fill = size - batch
            input_ids, attention_mask, position_ids = (
                torch.cat([t, t[:1].expand(fill, -1)]) for t in (input_ids, attention_mask, position_ids)
            )
            seq_ids = torch.cat([seq_ids, seq_ids[:1].expand(fill)])
        model = self.context_encoding_model.model
        logits = model(input_ids, attention_mask, position_ids, seq_ids)
        self.kv_cache_populated = True
        return CausalLMOutput(logits=logits[:batch])
