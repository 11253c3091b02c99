import torch
from torch import nn


class RMSNorm(nn.Module):
    """Root-mean-square norm, computed in float32, as the HF reference does. The weight scales the
    normalised input after it is cast back (Llama, Qwen, Mistral), or before, in float32, with
    ``scale_in_float32=True`` (OLMo 2, GPT-OSS: ``(self.weight * hidden_states).to(input_dtype)``)."""

    def __init__(self, hidden_size: int, eps: float = 1e-6, scale_in_float32: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps
        self.scale_in_float32 = scale_in_float32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.scale_in_float32:
            return (self.weight.float() * x).to(dtype)
        return self.weight * x.to(dtype)
