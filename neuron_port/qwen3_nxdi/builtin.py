"""NxDI's own Qwen3, as the port to judge (``port_specs/qwen3_nxdi.toml``)."""

from neuronx_distributed_inference.models.qwen3.modeling_qwen3 import NeuronQwen3ForCausalLM

__all__ = ["NeuronQwen3ForCausalLM"]
