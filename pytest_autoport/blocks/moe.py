"""Sparse mixture of experts for the static-shape ports: top-k routing and a bank of gated-MLP experts.

Dispatch is dense: every expert runs on every token and the outputs are summed under a routing
matrix [tokens, experts] that is zero outside each token's top-k. The shapes never depend on which
experts a token picked, so one traced graph serves every routing, and the expert weights are used
in place (gathering the top-k experts' weights per token would copy them k times per token).
The price is compute: num_experts / top_k times the FLOPs of sparse dispatch.
"""

import torch
from torch import nn


def top_k_routing(router_logits, top_k, normalize=True, weights_dtype=None):
    """Softmax over all experts (in float32), then each token's ``top_k`` experts, their weights
    optionally renormalised to sum to 1. Returns ``(top_k_weights, top_k_index)``, the weights in
    float32 unless ``weights_dtype`` says otherwise."""
    probs = torch.softmax(router_logits.float(), dim=-1)
    top_k_weights, top_k_index = torch.topk(probs, top_k, dim=-1)
    if normalize:
        top_k_weights = top_k_weights / top_k_weights.sum(dim=-1, keepdim=True)
    return top_k_weights.to(weights_dtype or top_k_weights.dtype), top_k_index


class MoEExperts(nn.Module):
    """``num_experts`` gated MLPs, down(act(gate(x)) * up(x)), with stacked weights:
    ``gate_up_proj`` [experts, 2 * intermediate, hidden] (gate rows first) and ``down_proj``
    [experts, hidden, intermediate]."""

    def __init__(self, num_experts, hidden_size, intermediate_size, act_fn):
        super().__init__()
        self.num_experts = num_experts
        self.gate_up_proj = nn.Parameter(torch.zeros(num_experts, 2 * intermediate_size, hidden_size))
        self.down_proj = nn.Parameter(torch.zeros(num_experts, hidden_size, intermediate_size))
        self.act_fn = act_fn

    def forward(self, hidden_states, top_k_index, top_k_weights):
        """hidden_states [tokens, hidden]; top_k_index / top_k_weights [tokens, k] -> [tokens, hidden]."""
        routing = torch.zeros(
            hidden_states.shape[0], self.num_experts, dtype=top_k_weights.dtype, device=hidden_states.device
        ).scatter(1, top_k_index, top_k_weights)
        gate, up = torch.einsum("th,eoh->eto", hidden_states, self.gate_up_proj).chunk(2, dim=-1)
        expert_out = torch.einsum("eti,ehi->eth", self.act_fn(gate) * up, self.down_proj)
        # weight in the routing dtype and sum over experts before the one cast back, as HF does
        weighted = expert_out * routing.t()[..., None]
        return weighted.sum(dim=0).to(hidden_states.dtype)


class SparseMoeBlock(nn.Module):
    """Route each token to its top-k experts and sum their outputs under the routing weights.

    ``gate`` is the router's projection to one logit per expert; ``weights_in_input_dtype`` casts the
    routing weights to the hidden states' dtype before they scale the experts (else float32).
    """

    def __init__(
        self, hidden_size, experts: MoEExperts, top_k, normalize_top_k=True, weights_in_input_dtype=False
    ):
        super().__init__()
        self.gate = nn.Linear(hidden_size, experts.num_experts, bias=False)
        self.experts = experts
        self.top_k = top_k
        self.normalize_top_k = normalize_top_k
        self.weights_in_input_dtype = weights_in_input_dtype

    def forward(self, hidden_states):
        shape = hidden_states.shape
        hidden_states = hidden_states.reshape(-1, shape[-1])
        router_logits = self.gate(hidden_states)
        weights_dtype = hidden_states.dtype if self.weights_in_input_dtype else None
        top_k_weights, top_k_index = top_k_routing(
            router_logits, self.top_k, self.normalize_top_k, weights_dtype
        )
        return self.experts(hidden_states, top_k_index, top_k_weights).reshape(shape)


def stack_experts(state_dict, prefix, num_experts, gate, up, down):
    """Per-expert checkpoint tensors ``{prefix}.{e}.{gate|up|down}.weight`` -> the stacked
    ``{prefix}.gate_up_proj`` / ``{prefix}.down_proj`` of :class:`MoEExperts`."""
    per_expert = [f"{prefix}.{e}" for e in range(num_experts)]
    gate_up = [
        torch.cat((state_dict[f"{p}.{gate}.weight"], state_dict[f"{p}.{up}.weight"])) for p in per_expert
    ]
    return {
        f"{prefix}.gate_up_proj": torch.stack(gate_up),
        f"{prefix}.down_proj": torch.stack([state_dict[f"{p}.{down}.weight"] for p in per_expert]),
    }


def stack_checkpoint_experts(state_dict, num_layers, experts_path, num_experts, gate, up, down):
    """Every tensor of ``state_dict`` by its own name, except that each layer's per-expert tensors
    ``{experts_path.format(layer)}.{e}.{gate|up|down}.weight`` are stacked by :func:`stack_experts`.
    Checkpoints whose experts are already stacked (transformers 5) pass through."""
    converted = {}
    for key in list(state_dict.keys()):
        if ".experts." in key and not key.endswith(("gate_up_proj", "down_proj")):
            continue  # one expert's tensor: stacked per layer below
        converted[key] = state_dict[key]
    for layer in range(num_layers):
        prefix = experts_path.format(layer)
        if f"{prefix}.0.{gate}.weight" in state_dict:
            converted.update(stack_experts(state_dict, prefix, num_experts, gate, up, down))
    return converted
