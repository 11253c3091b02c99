"""Mixtral family port for the portable torch target: Mistral's GQA attention (RoPE, optional sliding
window) with every MLP replaced by a sparse mixture of SwiGLU experts, top-k routed, the top-k
weights renormalised to sum to 1.

Static shapes: the KV cache is preallocated for ``neuron_config.batch_size`` x ``max_seq_len``, one
``forward(input_ids, position_ids, cache_len)`` serves context encoding and token generation, and the
experts are dispatched densely (see ``pytest_autoport/blocks/moe.py``).
"""

from transformers.activations import ACT2FN

from neuron_port.mistral.modeling_mistral import NeuronMistralAttention
from pytest_autoport.blocks.decoder import CausalLM, DecoderLayer, DecoderModel
from pytest_autoport.blocks.moe import MoEExperts, SparseMoeBlock, stack_checkpoint_experts


class NeuronMixtralSparseMoeBlock(SparseMoeBlock):
    def __init__(self, config):
        experts = MoEExperts(
            config.num_local_experts, config.hidden_size, config.intermediate_size, ACT2FN[config.hidden_act]
        )
        super().__init__(config.hidden_size, experts, config.num_experts_per_tok)


class NeuronMixtralAttention(NeuronMistralAttention):
    """Mistral's attention, unchanged: RoPE, GQA and the optional sliding window."""


class NeuronMixtralDecoderLayer(DecoderLayer):
    def __init__(self, config, layer_idx):
        super().__init__(config, NeuronMixtralAttention(config), NeuronMixtralSparseMoeBlock(config))


class NeuronMixtralModel(DecoderModel):
    def __init__(self, config):
        super().__init__(config, NeuronMixtralDecoderLayer)


class NeuronMixtralForCausalLM(CausalLM):
    model_cls = NeuronMixtralModel

    @staticmethod
    def convert_hf_to_neuron_state_dict(state_dict, config):
        """HF keys -> port keys. Checkpoints on the hub keep one w1 (gate) / w3 (up) / w2 (down) per expert
        under ``block_sparse_moe``; transformers 5 stacks them under ``mlp.experts``. Both are read."""
        converted = stack_checkpoint_experts(
            state_dict,
            config.num_hidden_layers,
            "model.layers.{}.block_sparse_moe.experts",
            config.num_local_experts,
            "w1", "w3", "w2",
        )  # fmt: skip
        converted = {key.replace(".block_sparse_moe.", ".mlp."): value for key, value in converted.items()}
        return CausalLM.convert_hf_to_neuron_state_dict(converted, config)
