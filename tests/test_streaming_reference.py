"""The streaming FP32 reference (one decoder layer at a time from memory-mapped safetensors) scores token
sequences exactly as the HF model held whole does, on every bundled decoder family; it never holds two
layers at once; it reads sharded checkpoints; and the golden stage run with ``--autoport-golden-streaming``
passes a correct port and still catches a decode-only bug, judging the port's own trajectory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from pytest_autoport.errors import AutoportError
from pytest_autoport.hf_reference import load_hf_model
from pytest_autoport.spec import load_spec
from pytest_autoport.streaming_reference import StreamingReference

REPO = Path(__file__).resolve().parents[1]
FAMILIES = [
    "llama",
    "llama_int8",
    "mistral",
    "qwen3",
    "gemma3",
    "mixtral",
    "qwen3_moe",
    "deepseek",
    "gpt_oss",
]
LENGTHS = (5, 17, 11)  # right-padded in one batch: the padding must not change the real positions


def model_class(name: str) -> str:
    return load_spec(REPO / "port_specs" / f"{name}.toml", REPO, check_imports=False).model.hf_model_class


def sequences(vocab: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in LENGTHS]


def assert_equal_to_whole_model(streamed: StreamingReference, whole, seqs) -> None:
    scores = streamed.score(seqs)
    with torch.inference_mode():
        for seq, logits in zip(seqs, scores, strict=True):
            expected = whole(torch.tensor([seq])).logits[0].float()
            assert logits.dtype == torch.float32 and logits.shape == expected.shape
            rel = ((logits - expected).abs().max() / expected.abs().max()).item()
            assert rel <= 1e-5, f"streamed logits differ from the whole model: relative {rel:.3g}"


def live_layer_counter(streamed: StreamingReference) -> list[int]:
    """Observed from outside: after each layer's own pre-hook, how many layers hold real parameters."""
    seen: list[int] = []

    def count(module, args):
        seen.append(sum(any(not p.is_meta for p in layer.parameters()) for layer in streamed.layers))

    for layer in streamed.layers:
        layer.register_forward_pre_hook(count)  # runs after the streaming pre-hook registered first
    return seen


@pytest.mark.parametrize("name", FAMILIES)
def test_streamed_logits_equal_the_whole_model_one_layer_at_a_time(tiny_weights, name):
    folder = tiny_weights(name)
    streamed = StreamingReference(model_class(name), folder)
    seen = live_layer_counter(streamed)
    whole = load_hf_model(model_class(name), folder, Path("spec.toml"))

    assert_equal_to_whole_model(streamed, whole, sequences(whole.config.vocab_size))

    assert seen == [1] * len(streamed.layers)  # one forward, each layer alone when it ran
    assert streamed.max_materialized_layers == 1
    assert all(p.is_meta for p in streamed.layers.parameters())  # every layer given back afterwards


def test_sharded_checkpoint(tiny_weights, tmp_path):
    folder = tiny_weights("llama")
    whole = load_hf_model("LlamaForCausalLM", folder, Path("spec.toml"))
    whole.save_pretrained(tmp_path, max_shard_size="100KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2

    streamed = StreamingReference("LlamaForCausalLM", tmp_path)
    assert_equal_to_whole_model(streamed, whole, sequences(whole.config.vocab_size, seed=1))
    assert streamed.max_materialized_layers == 1


def test_low_precision_stream_equals_the_cast_whole_model(tiny_weights):
    folder = tiny_weights("llama")
    whole = load_hf_model("LlamaForCausalLM", folder, Path("spec.toml")).to(torch.bfloat16)
    streamed = StreamingReference("LlamaForCausalLM", folder, torch.bfloat16)
    seq = sequences(whole.config.vocab_size)[1]
    with torch.inference_mode():
        expected = whole(torch.tensor([seq])).logits[0].float()
    (logits,) = streamed.score([seq])
    assert torch.equal(logits, expected)


def test_encoder_decoder_is_refused(tmp_path):
    from transformers import T5Config

    T5Config(d_model=8, d_ff=16, num_layers=1, num_heads=2, d_kv=4, vocab_size=32).save_pretrained(tmp_path)
    with pytest.raises(
        AutoportError, match="encoder-decoder model; the streaming golden scores decoder-only"
    ):
        StreamingReference("T5ForConditionalGeneration", tmp_path)


def test_unknown_quantisation_is_refused(tiny_weights, tmp_path):
    shutil.copy(tiny_weights("llama") / "config.json", tmp_path / "config.json")
    config = json.loads((tmp_path / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "fp8"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(AutoportError, match="no float reference for quant_method 'fp8'"):
        StreamingReference("LlamaForCausalLM", tmp_path)


# -- the golden stage with --autoport-golden-streaming ---------------------------------------------------
DECODE_ONLY_KV_BUG = (
    "blocks/attention.py",
    "        batch, heads, _, head_dim = k.shape\n",
    "        batch, heads, _, head_dim = k.shape\n"
    "        if k.shape[2] == 1:\n"
    "            position_ids = torch.zeros_like(position_ids)\n",
)


def test_streaming_golden_passes_a_correct_port(port_project):
    port_project.run("-k", "golden", "--autoport-golden-streaming")
    golden = port_project.stage("golden")
    assert golden["status"] == "passed", golden["message"]
    figures = golden["figures"]
    assert figures["reference"] == "streaming" and figures["scored_sequence"] == "port_greedy"
    assert figures["token_match"] == 1.0 and figures["teacher_forced_match"] == 1.0
    assert figures["decode_parity"]["passed"] is True


def test_streaming_golden_catches_a_decode_only_bug(port_project):
    port_project.replace(*DECODE_ONLY_KV_BUG, what="decode-only KV bug")
    port_project.run("-k", "golden", "--autoport-golden-streaming")
    golden = port_project.stage("golden")
    assert golden["status"] == "failed"
    message = golden["message"]
    assert message.startswith(
        "[streaming FP32 reference, one decoder layer at a time; scored sequence: the port's"
    )
    assert "below the threshold 95%" in message
    assert "the fault is in the token-generation path" in message
    figures = golden["figures"]
    assert figures["scored_sequence"] == "port_greedy"
    assert figures["teacher_forced_match"] == 1.0  # context encoding of the port's trajectory is right
    assert figures["free_running_divergences"]
    assert figures["decode_parity"]["passed"] is False


def golden_session(folder: Path, **extra):
    from types import SimpleNamespace

    built = {}

    def reference(dtype):
        return built.setdefault(dtype, StreamingReference("LlamaForCausalLM", folder, dtype))

    return SimpleNamespace(
        options=SimpleNamespace(golden_streaming=True),
        is_encoder_decoder=False,
        prompt_ids=[[5, 9, 2], [7, 1, 4, 4, 8]],
        streaming_reference=reference,
        **extra,
    )


def test_decode_reference_windows_in_low_precision_equal_the_cast_whole_model(tiny_weights):
    from pytest_autoport.hf_reference import teacher_forced_logits
    from pytest_autoport.stages.golden_reference import streamed_windows

    folder = tiny_weights("llama")
    session = golden_session(folder, hf_config=None)
    continuations = [[3, 3, 11, 6], [2, 10]]
    whole = load_hf_model("LlamaForCausalLM", folder, Path("spec.toml")).to(torch.bfloat16)
    expected = teacher_forced_logits(whole, session.prompt_ids, continuations)  # the whole-model path
    streamed = streamed_windows(session, continuations, torch.bfloat16)
    for got, want in zip(streamed, expected, strict=True):
        assert got.shape == want.shape == (len(want), whole.config.vocab_size)
        assert torch.equal(got, want)


def test_streaming_golden_refuses_an_encoder_decoder_spec():
    from types import SimpleNamespace

    from pytest_autoport.stages.golden_reference import streaming

    session = SimpleNamespace(
        options=SimpleNamespace(golden_streaming=True),
        is_encoder_decoder=True,
        spec=SimpleNamespace(model=SimpleNamespace(hf_model_class="T5ForConditionalGeneration")),
    )
    with pytest.raises(AutoportError, match="T5ForConditionalGeneration is an encoder-decoder model"):
        streaming(session)
