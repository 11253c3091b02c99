"""Stand-in for ``neuronx_distributed_inference.utils.hf_adapter`` (contract tests only).

``load_pretrained_config(path)`` returns a hook that copies config.json's attributes onto the
InferenceConfig. ``HuggingFaceGenerationAdapter`` takes ``model.forward`` when it is built (as the real
one does), resets the model, runs context encoding once from position 0 and then one
token-generation step per new token, at the position after the mask's last one, the context's mask
growing by a one at its front after each token-generation step (as the real one with right padding:
at position t the mask has ones over cache slots 0..t-1). Every forward gets ``sampling_params``
[batch, 3] (top_k, top_p, temperature). It honours ``do_sample`` (temperature only), ``eos_token_id``
(rows stop, then get ``pad_token_id``) and ``suppress_tokens``. With ``OPTIONS["refeed"]`` it falls
into the trap the real adapter avoids: it re-feeds the whole sequence from position 0 at every step.
"""

import json
import os

import _standin_log
import torch

from neuronx_distributed_inference.models import model_base  # noqa: F401  (the real module imports it)


def load_pretrained_config(model_path_or_name=None, hf_config=None):
    _standin_log.record("load_pretrained_config", model_path_or_name=model_path_or_name, hf_config=hf_config)

    def load_config(self):
        _standin_log.record("load_config hook", cls=type(self).__name__)
        with open(os.path.join(model_path_or_name, "config.json"), encoding="utf-8") as f:
            values = json.load(f)
        values.pop("torch_dtype", None)
        values.pop("dtype", None)
        self.__dict__.update(values)

    return load_config


class HuggingFaceGenerationAdapter:
    def __init__(self, model, input_start_offsets=None, capture_draft_logits=False):
        _standin_log.record("HuggingFaceGenerationAdapter.__init__", model=type(model).__name__)
        self.neuron_model = model
        self.forward = model.forward

    def _pick(self, logits, kwargs):
        logits = logits[:, -1].float()
        if kwargs.get("suppress_tokens"):
            logits[:, kwargs["suppress_tokens"]] = float("-inf")
        if kwargs.get("do_sample"):
            return torch.multinomial((logits / kwargs.get("temperature", 1.0)).softmax(-1), 1)[:, 0]
        return logits.argmax(-1)

    def generate(self, input_ids, attention_mask=None, **kwargs):
        _standin_log.record(
            "HuggingFaceGenerationAdapter.generate", shape=tuple(input_ids.shape), kwargs=kwargs
        )
        self.neuron_model.reset()
        eos, pad = kwargs.get("eos_token_id"), kwargs.get("pad_token_id", 0)
        batch = input_ids.shape[0]
        sampling_params = torch.tensor(  # as the real adapter: from the generation config, every call
            [[kwargs.get("top_k", 50), kwargs.get("top_p", 1.0), kwargs.get("temperature", 1.0)]] * batch
        )
        positions = attention_mask.long().cumsum(-1) - 1
        positions.masked_fill_(attention_mask == 0, 1)
        logits = self.forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=positions,
            sampling_params=sampling_params,
        ).logits
        new = [self._pick(logits, kwargs)]
        done = new[0] == eos if eos is not None else torch.zeros_like(new[0], dtype=torch.bool)
        mask = attention_mask
        for _ in range(1, kwargs["max_new_tokens"]):
            if bool(done.all()):
                break
            if _standin_log.OPTIONS.get("refeed"):
                ids = torch.cat([input_ids, torch.stack(new, dim=1)], dim=1)
                pos = torch.arange(ids.shape[1]).expand_as(ids)
                logits = self.forward(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    position_ids=pos,
                    sampling_params=sampling_params,
                ).logits
            else:
                # as the real adapter (padding_side "right"): the position after the mask's last
                # one; after each token-generation step the mask gains a one at its front
                pos = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1).amax(1, keepdim=True) + 1
                logits = self.forward(
                    input_ids=new[-1][:, None],
                    attention_mask=mask,
                    position_ids=pos,
                    sampling_params=sampling_params,
                ).logits
                mask = torch.cat([mask.new_ones(mask.shape[0], 1), mask], dim=1)
            token = torch.where(done, torch.full_like(new[-1], pad), self._pick(logits, kwargs))
            new.append(token)
            if eos is not None:
                done |= token == eos
        return torch.cat([input_ids, torch.stack(new, dim=1)], dim=1)
