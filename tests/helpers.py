"""Small helpers shared by the harness's own tests (import as ``from tests.helpers import ...``)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from pytest_autoport.generation import StaticGraphs

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]


def bundled_specs() -> list[Path]:
    """The bundled specs: each ``port_specs/*.toml`` with a ``[tiny]`` table, the ones the suite can make
    a tiny checkpoint for. A user's own spec beside them (no ``[tiny]``, or TOML that does not parse)
    is left out."""
    specs = []
    for path in sorted((REPO / "port_specs").glob("*.toml")):
        try:
            if "tiny" in tomllib.loads(path.read_text(encoding="utf-8")):
                specs.append(path)
        except (tomllib.TOMLDecodeError, UnicodeDecodeError):
            continue
    return specs


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


def llama_session(weights: Path):
    """An ``AutoportSession`` of the bundled Llama spec reading ``weights`` (its port not imported)."""
    from pytest_autoport.session import AutoportSession, Options
    from pytest_autoport.spec import load_spec

    spec = load_spec(REPO / "port_specs" / "llama.toml", REPO, check_imports=False)
    spec = dataclasses.replace(spec, model=dataclasses.replace(spec.model, weights_path=str(weights)))
    return AutoportSession(spec, Options(artifacts_dir=REPO / "unused"))
