"""The T5 port end to end (encoder-decoder: relative position buckets, cross-attention cached from the
encoder output): the correct port passes every stage, including the encoder, decoder context-encoding
and token-generation graphs; a wrong bucket direction or cross-attention keys from the wrong
projection fail at their component, the model check localises them, and compile/generate/golden skip."""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest

from pytest_autoport.checkpoint import CORPUS
from pytest_autoport.spec import load_spec

FILE = "t5/modeling_t5.py"
PER_LAYER = (
    "encoder_attention",
    "encoder_ff_norm",
    "encoder_mlp",
    "encoder_layer",
    "decoder_self_attention",
    "cross_attention_norm",
    "cross_attention",
    "decoder_mlp",
    "decoder_layer",
)
COMPONENTS = [
    "embedding",
    *(f"{name}-layer{i}" for name in PER_LAYER[:4] for i in (0, 1)),
    "encoder_norm",
    *(f"{name}-layer{i}" for name in PER_LAYER[4:] for i in (0, 1)),
    "decoder_norm",
    "lm_head",
]


@pytest.fixture
def project(make_project):
    return make_project("t5")


def test_correct_port_passes_every_stage(project):
    figures = project.assert_passes_every_stage(project.run(), COMPONENTS)
    assert figures["compile"]["graphs"] == 8  # 3 encoder, 3 decoder context-encoding, 2 token-generation
    used = figures["generate"]["buckets_used"].split(",")
    assert "encoder_16" in used and "context_encoding_16" in used
    assert {"token_generation_16", "token_generation_64"} <= set(used)  # decoding crosses buckets
    assert figures["golden"]["teacher_forced_match"] >= 0.95
    # trained to continue a passage: greedy output follows the corpus text after the prompt, under the
    # default degeneracy gates. Training's float sums differ by CPU, so a word may be dropped or swapped
    # on one machine and not another: the words match the passage's in order, to a 0.8 similarity.
    corpus = " ".join(CORPUS.read_text().split())
    prompts = load_spec(project.spec, project.root, check_imports=False).validation.prompts
    for prompt, text in zip(prompts, figures["generate"]["texts"], strict=True):
        words = text.split()
        assert len(words) >= 10
        passage = corpus[corpus.index(prompt) + len(prompt) :].split()[: len(words)]
        assert difflib.SequenceMatcher(a=words, b=passage).ratio() >= 0.8, (prompt, text)


def fp32_ids(*names: str) -> tuple[str, ...]:
    """Stage ids of an FP32-only run's failures: these components in both layers, then the model check."""
    return (*(f"component[{name}-layer{i}]" for name in names for i in (0, 1)), "model")


@pytest.mark.parametrize(
    ("bug", "failing", "first_divergent", "every_failure"),
    [
        (
            # the encoder's buckets made one-directional (and the decoder's two-directional)
            (
                "relative_position_bucket(relative, not self.is_decoder,",
                "relative_position_bucket(relative, self.is_decoder,",
            ),
            "encoder_attention",
            "encoder.block.0.layer.0.SelfAttention",
            # every self-attention of both stacks buckets its positions through it
            fp32_ids("encoder_attention", "encoder_layer", "decoder_self_attention", "decoder_layer"),
        ),
        (
            # cross-attention keys projected with the query weights
            ("k = self.k(encoder_hidden)", "k = self.q(encoder_hidden)"),
            "cross_attention",
            "decoder.block.0.layer.1.EncDecAttention",
            fp32_ids("cross_attention", "decoder_layer"),
        ),
    ],
    ids=["bucket_direction", "cross_attention_keys"],
)
def test_planted_bug_fails_at_its_component(project, bug, failing, first_divergent, every_failure):
    project.replace(FILE, *bug)
    project.assert_caught(
        project.run("-k", "not bfloat16"),  # the FP32 checks catch both; halves the run
        failing=(f"{failing}-layer0",),
        passing=("embedding",),
        first_divergent=first_divergent,
        failing_exactly=every_failure,
    )


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('architecture = "encoder_decoder"', 'architecture = "seq2seq"', "unknown architecture 'seq2seq'"),
        ('architecture = "encoder_decoder"', 'architecture = "decoder"', "needs port.architecture"),
    ],
)
def test_architecture_is_validated(tmp_path, old, new, message):
    from pytest_autoport.errors import SpecError
    from pytest_autoport.spec import load_spec

    repo = Path(__file__).resolve().parents[1]
    spec = tmp_path / "t5.toml"
    spec.write_text((repo / "port_specs" / "t5.toml").read_text().replace(old, new, 1))
    with pytest.raises(SpecError, match="port.architecture|components") as raised:
        load_spec(spec, repo, check_imports=False)
    assert message in str(raised.value)
