"""Qwen3-MoE family port for the portable torch target: GQA attention with a per-head RMSNorm on
queries and keys (before RoPE), and a sparse mixture of SwiGLU experts in every ``decoder_sparse_step``-th
layer that ``mlp_only_layers`` does not name (the other layers keep a dense SwiGLU MLP). Routing is a
softmax over all experts, then the top-k, renormalised only when ``norm_topk_prob`` is set.

Static shapes: the KV cache is preallocated for ``neuron_config.batch_size`` x ``max_seq_len``, one
``forward(input_ids, position_ids, cache_len)`` serves context encoding and token generation, and the
experts are dispatched densely (see ``pytest_autoport/blocks/moe.py``).
"""

from transformers.activations import ACT2FN

from neuron_port.qwen3.modeling_qwen3 import NeuronQwen3Attention
from pytest_autoport.blocks.decoder import CausalLM, DecoderLayer, DecoderModel, SwiGLUMLP
from pytest_autoport.blocks.moe import MoEExperts, SparseMoeBlock, stack_checkpoint_experts


def is_sparse_layer(config, layer_idx):
    return (
        layer_idx not in (config.mlp_only_layers or [])
        and config.num_experts > 0
        and (layer_idx + 1) % config.decoder_sparse_step == 0
    )


class NeuronQwen3MoeMLP(SwiGLUMLP):
    def __init__(self, config):
        super().__init__(config.hidden_size, config.intermediate_size, ACT2FN[config.hidden_act])


class NeuronQwen3MoeSparseMoeBlock(SparseMoeBlock):
    def __init__(self, config):
        experts = MoEExperts(
            config.num_experts, config.hidden_size, config.moe_intermediate_size, ACT2FN[config.hidden_act]
        )
        # HF hands the experts routing weights in the activations' dtype
        super().__init__(
            config.hidden_size,
            experts,
            config.num_experts_per_tok,
            normalize_top_k=config.norm_topk_prob,
            weights_in_input_dtype=True,
        )


class NeuronQwen3MoeAttention(NeuronQwen3Attention):
    """Qwen3's attention, but its sliding window (set only under ``use_sliding_window``) covers every layer."""

    def __init__(self, config, layer_idx):
        super().__init__(config, layer_idx)
        self.sliding_window = config.sliding_window


class NeuronQwen3MoeDecoderLayer(DecoderLayer):
    def __init__(self, config, layer_idx):
        sparse = is_sparse_layer(config, layer_idx)
        mlp = NeuronQwen3MoeSparseMoeBlock(config) if sparse else NeuronQwen3MoeMLP(config)
        super().__init__(config, NeuronQwen3MoeAttention(config, layer_idx), mlp)


class NeuronQwen3MoeModel(DecoderModel):
    def __init__(self, config):
        super().__init__(config, NeuronQwen3MoeDecoderLayer)


class NeuronQwen3MoeForCausalLM(CausalLM):
    model_cls = NeuronQwen3MoeModel

    @staticmethod
    def convert_hf_to_neuron_state_dict(state_dict, config):
        """HF keys -> port keys. Checkpoints on the hub keep one gate/up/down projection per expert;
        transformers 5 stacks them as ``mlp.experts.gate_up_proj`` / ``down_proj``. Both are read."""
        converted = stack_checkpoint_experts(
            state_dict,
            config.num_hidden_layers,
            "model.layers.{}.mlp.experts",
            config.num_experts,
            "gate_proj", "up_proj", "down_proj",
        )  # fmt: skip
        return CausalLM.convert_hf_to_neuron_state_dict(converted, config)
