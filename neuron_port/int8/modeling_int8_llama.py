"""Llama from an INT8 weight-only checkpoint: the Llama port itself, with a conversion that dequantises.

Every Linear weight of the decoder layers arrives as ``<name>.weight`` int8 [out, in] plus
``<name>.weight_scale`` float32 [out], symmetric, one scale per output channel; the port computes in
float on ``int8 * scale`` (dequantised once, at load).
"""

import torch

from neuron_port.llama.modeling_llama import NeuronLlamaForCausalLM


def dequantize_int8(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """int8 [out, in] and float32 [out] -> float32 [out, in]: row o scaled by scale[o]."""
    return weight.to(torch.float32) * scale[:, None]


class NeuronInt8LlamaForCausalLM(NeuronLlamaForCausalLM):
    @staticmethod
    def convert_hf_to_neuron_state_dict(state_dict, config):
        keys = set(state_dict.keys())
        dequantized = {}
        for key in keys:
            if key.endswith(".weight_scale"):
                continue
            if f"{key}_scale" in keys:
                dequantized[key] = dequantize_int8(state_dict[key], state_dict[f"{key}_scale"])
            else:
                dequantized[key] = state_dict[key]
        return NeuronLlamaForCausalLM.convert_hf_to_neuron_state_dict(dequantized, config)
