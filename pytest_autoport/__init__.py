"""pytest-autoport: stage-by-stage verdicts for HuggingFace -> AWS Neuron (NxD Inference) ports."""

__version__ = "0.1.0"
