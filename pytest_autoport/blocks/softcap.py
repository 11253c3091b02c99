import torch


def softcap(x: torch.Tensor, cap: float | None) -> torch.Tensor:
    """Squash ``x`` smoothly into (-cap, cap): ``cap * tanh(x / cap)``; ``None`` leaves it as it is."""
    if cap is None:
        return x
    return torch.tanh(x / cap) * cap
