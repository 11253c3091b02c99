"""Small helpers shared by the harness's own tests (import as ``from tests.helpers import ...``)."""

from __future__ import annotations

from pytest_autoport.generation import StaticGraphs


def fake_static_graphs(graph, *, batch_size, max_seq_len=16, context=(4, 8), token=(8, 16)) -> StaticGraphs:
    """StaticGraphs over stand-in graphs: ``graph(name)`` makes the graph called ``ctx{bucket}`` /
    ``tkg{bucket}``; the cache reset does nothing."""
    return StaticGraphs(
        context={b: graph(f"ctx{b}") for b in context},
        token={b: graph(f"tkg{b}") for b in token},
        reset_cache=lambda: None,
        batch_size=batch_size,
        max_seq_len=max_seq_len,
    )


LLAMA_LAYER_COMPONENTS = ("input_norm", "attention", "post_attention_norm", "mlp", "decoder_layer")


def decoder_components(*per_layer: str, layers: int = 2) -> list[str]:
    """A decoder port's component ids in verdict order: the embedding, each of ``per_layer`` for every
    layer (``mlp-layer0``), the final norm and the LM head."""
    return [
        "embedding",
        *(f"{kind}-layer{i}" for kind in per_layer for i in range(layers)),
        "norm",
        "lm_head",
    ]
