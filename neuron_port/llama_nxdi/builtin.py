"""NxDI's own Llama, as the port to judge (``port_specs/llama_nxdi.toml``)."""

from neuronx_distributed_inference.models.llama.modeling_llama import NeuronLlamaForCausalLM

__all__ = ["NeuronLlamaForCausalLM"]
