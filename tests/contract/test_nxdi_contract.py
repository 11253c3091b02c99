"""CONTRACT tests of the ``nxdi`` target against a stand-in NxDI (see conftest.py): the adapter calls
NxDI's API in the right order, with the right arguments, and fails clearly. Not hardware validation."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest
import torch
from causal_reference import greedy_reference, toy_logits

from pytest_autoport.errors import StageFailure
from pytest_autoport.generation import SamplingParams
from pytest_autoport.targets import get_target
from pytest_autoport.targets.nxdi import NxdiTarget, cc_flags, generate_kwargs, nxdi_bucket, nxdi_top_k

PROMPTS = [[1, 2, 3], [4, 5], [6, 7, 8, 9, 10]]


def _subsequence(names: list[str], expected: list[str]) -> bool:
    remaining = iter(names)
    return all(name in remaining for name in expected)


# -- without the stand-in: the real environment ---------------------------------------------------
def test_unavailable_without_the_sdk():
    if importlib.util.find_spec("neuronx_distributed_inference") is not None:
        pytest.skip("an NxDI is installed here (a Neuron machine?)")
    reason = NxdiTarget().unavailable_reason()
    assert reason.startswith("neuronx-distributed-inference is not importable:"), reason


def test_get_target_returns_the_nxdi_target():
    assert get_target("nxdi").name == "nxdi"


# -- availability and versions ---------------------------------------------------------------------
def test_available_with_the_stand_in(stand_in):
    assert NxdiTarget().unavailable_reason() is None
    first = stand_in.CALLS[0]
    assert first[0] == "import" and first[1]["NXD_CPU_MODE"] == "1"


def test_device_stage_without_neuron_cores_names_the_reason(stand_in, monkeypatch, tmp_path):
    monkeypatch.setenv(
        "PYTHONPATH", str(stand_in.__file__).rsplit("/", 1)[0]
    )  # the envcheck child sees it too
    monkeypatch.setenv("AUTOPORT_NEURON_DEV_GLOB", str(tmp_path / "no-neuron*"))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no neuron-ls
    target = NxdiTarget()
    assert target.unavailable_reason("model") is None
    assert "no NeuronCores" in target.unavailable_reason("compile")


def test_versions_name_the_sdk_and_the_effective_flags(stand_in, monkeypatch):
    monkeypatch.setenv("NEURON_CC_FLAGS", "--mine")
    versions = NxdiTarget().versions()
    for dist in (
        "neuronx-distributed-inference",
        "neuronx-distributed",
        "torch-neuronx",
        "neuronx-cc",
        "torch",
    ):
        assert dist in versions
    assert versions["NEURON_CC_FLAGS"] == "--mine"


def test_cc_flags_are_recorded_never_altered():
    # nothing in NxD / NxDI reads NEURON_CC_FLAGS: the harness adds nothing to them
    assert cc_flags(None) == ""
    assert cc_flags("-O2  --foo") == "-O2 --foo"


# -- eager port in CPU mode ------------------------------------------------------------------------
def test_build_port_calls_in_order_with_cpu_mode_first(stand_in, make_spec):
    spec = make_spec()
    port = NxdiTarget().build_port(spec, None, torch.float32)

    first = stand_in.CALLS[0]
    assert first[0] == "import" and first[1]["NXD_CPU_MODE"] == "1", (
        "NXD_CPU_MODE must be set before NxD is imported"
    )
    assert _subsequence(
        stand_in.names(),
        [
            "NeuronConfig.__init__",
            "load_pretrained_config",
            "InferenceConfig.__init__",
            "load_config hook",
            "app.__init__",
            "app.to_cpu",
        ],
    )
    (nc,) = stand_in.find("NeuronConfig.__init__")
    assert nc["cls"] == "TinyNeuronConfig"  # from get_config_cls().get_neuron_config_cls()
    assert nc["kwargs"] == {  # CPU mode: one bucket of seq_len (its context mask has seq_len positions)
        "batch_size": 1,
        "seq_len": 32,
        "max_context_length": 32,
        "enable_bucketing": False,
        "torch_dtype": torch.float32,
        "tp_degree": 1,  # CPU mode runs in one process unless torchrun set WORLD_SIZE
        "on_cpu": True,
    }
    assert stand_in.find("load_pretrained_config")[0]["model_path_or_name"] == str(spec.weights_dir)
    assert stand_in.find("InferenceConfig.__init__")[0]["cls"] == "TinyInferenceConfig"
    assert stand_in.find("app.__init__")[0]["model_path"] == str(spec.weights_dir)
    assert stand_in.find("app.to_cpu")[0]["NXD_CPU_MODE"] == "1"
    assert type(port).__name__ == "NeuronTinyModel"
    assert port.config.vocab_size == 32  # the HF attributes arrived through load_pretrained_config
    assert not any(key.startswith("_autoport") for key in port.state_dict()), "the app is no submodule"


@pytest.mark.stand_in_value
def test_build_port_loads_the_checkpoint(stand_in, make_spec):
    """STAND-IN VALUE: the stand-in's own ``to_cpu()`` loads the checkpoint (the harness only names the
    model path, asserted in test_build_port_calls_in_order); NxDI's loading is checked in tests/real_nxdi."""
    from safetensors.torch import load_file

    spec = make_spec()
    port = NxdiTarget().build_port(spec, None, torch.float32)
    saved = load_file(str(spec.weights_dir / "model.safetensors"))
    torch.testing.assert_close(port.lm_head.weight, saved["lm_head.weight"])
    torch.testing.assert_close(port.layers[1].mlp.up_proj.weight, saved["model.layers.1.mlp.up_proj.weight"])
    assert stand_in.find("load checkpoint")[0]["missing"] == []


def test_run_model_returns_logits_at_every_position(stand_in, make_spec, causal_contract):
    target = NxdiTarget()
    port = target.build_port(make_spec(), None, torch.float32)
    ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6, 5, 3]])  # 10 tokens: padded to the 16 bucket inside

    logits = target.run_model(port, ids)

    assert logits.shape == (1, 10, 32) and logits.dtype == torch.float32
    torch.testing.assert_close(logits, toy_logits(port, ids))
    names = stand_in.names()
    assert names.index("app.reset") < names.index("app.forward")
    assert stand_in.find("app.forward")[0]["kind"] == "context_encoding"
    causal_contract([[10]])


def test_run_component_calls_nxdi_modules_positionally(stand_in, make_spec):
    target = NxdiTarget()
    port = target.build_port(make_spec(), None, torch.float32)
    hidden = torch.randn(1, 5, 8)
    inputs = {
        "hidden_states": hidden,
        "position_ids": torch.arange(5)[None],
        "input_ids": torch.tensor([[1, 2, 3, 4, 5]]),
    }

    mlp = target.run_component(port.layers[0].mlp, "hidden", inputs)
    torch.testing.assert_close(mlp, port.layers[0].mlp(hidden)[0])  # the head of NxDI's (out, residual)

    layer = port.layers[1]
    out = target.run_component(layer, "hidden_positions", inputs)
    torch.testing.assert_close(out, hidden + layer.mlp(hidden)[0])
    mask, positions = layer.calls[-1]
    assert mask.dtype == torch.bool and mask.shape == (1, 1, 5, 5) and bool(mask[0, 0].triu(1).any()) is False
    assert positions.tolist() == [[0, 1, 2, 3, 4]]

    embedded = target.run_component(port.embed_tokens, "input_ids", inputs)
    torch.testing.assert_close(embedded, port.embed_tokens(inputs["input_ids"]))


def test_run_component_without_an_attention_mask_parameter_gets_positions(stand_in, make_spec):
    class Rotary(torch.nn.Module):  # NxDI rotary embeddings: forward(x, position_ids)
        def forward(self, x, position_ids):
            return x * 0 + position_ids[..., None], None

    hidden = torch.randn(1, 3, 8)
    inputs = {"hidden_states": hidden, "position_ids": torch.arange(3)[None], "input_ids": None}
    out = NxdiTarget().run_component(Rotary(), "hidden_positions", inputs)
    assert out[0, :, 0].tolist() == [0, 1, 2]


def test_component_on_device_goes_through_build_module(stand_in, make_spec):
    target = NxdiTarget(components_on_device=True)
    port = target.build_port(make_spec(), None, torch.float32)
    mlp = port.layers[0].mlp
    hidden = torch.randn(1, 4, 8)
    inputs = {
        "hidden_states": hidden,
        "position_ids": torch.arange(4)[None],
        "input_ids": torch.zeros(1, 4, dtype=torch.long),
    }

    out = target.run_component(mlp, "hidden", inputs)

    torch.testing.assert_close(out, mlp(hidden)[0])
    names = stand_in.names()
    assert names.index("destroy_cpu_env") < names.index("build_module")
    (call,) = stand_in.find("build_module")
    assert call["module_cls"] is type(mlp)
    assert len(call["example_inputs"]) == 1 and call["example_inputs"][0][0] is hidden
    assert call["module_init_kwargs"] == {"config": mlp.config}
    assert call["tp_degree"] == 1 and call["NXD_CPU_MODE"] == "0"
    assert call["checkpoint_path"].endswith("checkpoint.pt")


# -- compile -----------------------------------------------------------------------------------------
def test_compile_then_save_with_flags_appended_and_workdir_inside(stand_in, make_spec, tmp_path, monkeypatch):
    monkeypatch.setenv("NEURON_CC_FLAGS", "--user-flag -O2")
    spec = make_spec()
    target = NxdiTarget()
    port = target.build_port(spec, None, torch.float32)
    out_dir = tmp_path / "artifact"
    out_dir.mkdir()

    result = target.compile(port, spec, out_dir)

    names = stand_in.names()
    compile_at = names.index("app.compile")
    assert names.count("InferenceConfig.save") == 1, "compile() saves neuron_config.json itself, once"
    assert names.index("destroy_cpu_env") < compile_at, "the CPU-mode process group goes before tracing"
    call = stand_in.find("app.compile")[0]
    assert call["path"] == str(out_dir.resolve())
    assert call["NEURON_CC_FLAGS"] == "--user-flag -O2", "nothing reads them: left as the user set them"
    assert call["BASE_COMPILE_WORK_DIR"] == str(out_dir.resolve() / "compiler_workdir")
    assert call["NXD_CPU_MODE"] == "0"
    device_config = stand_in.find("NeuronConfig.__init__")[-1]["kwargs"]
    assert device_config["tp_degree"] == 2 and device_config["on_cpu"] is False

    assert os.environ["NEURON_CC_FLAGS"] == "--user-flag -O2", "the user's flags are restored, not clobbered"
    assert "BASE_COMPILE_WORK_DIR" not in os.environ
    saved = json.loads((out_dir / "neuron_config.json").read_text())
    assert saved["neuron_config"]["attn_cls"]["__name__"] == "TinyAttention"
    assert saved["neuron_config"]["torch_dtype"] == "float32"
    assert (out_dir / "model.pt").is_file()
    assert set(result.graphs) == {
        "context_encoding_8",
        "context_encoding_16",
        "token_generation_16",
        "token_generation_32",
    }
    assert result.details["neuron_cc_flags"] == "--user-flag -O2"
    assert result.details["attn_cls"] == "standin_port_tiny.TinyAttention"
    assert result.details["path"] == "device"


@pytest.mark.parametrize("cls", ["DefaultAttnClsForCausalLM", "NoneAttnClsForCausalLM"])
def test_compile_accepts_a_port_that_never_sets_attn_cls(stand_in, make_spec, tmp_path, cls):
    # only NxDI's Llama reads attn_cls (a string key of _LLAMA_MODULE_MAP); most ports never set it
    out_dir = tmp_path / "artifact"
    out_dir.mkdir()
    result = NxdiTarget().compile(None, make_spec(cls), out_dir)
    assert "app.compile" in stand_in.names()
    assert result.details["attn_cls"] in (None, "NeuronLlamaAttention")


def test_failed_compile_keeps_hlo_and_logs_and_names_them(stand_in, make_spec, tmp_path):
    stand_in.FAIL_AT.add("app.compile")
    out_dir = tmp_path / "artifact"
    out_dir.mkdir()

    with pytest.raises(StageFailure) as info:
        NxdiTarget().compile(None, make_spec(), out_dir)

    message = str(info.value)
    assert "compile() failed: RuntimeError: stand-in app.compile failed" in message
    hlo = "compiler_workdir/context_encoding_model/_tp0_bk0/model.hlo_module.pb"
    log = "compiler_workdir/context_encoding_model/_tp0_bk0/log-neuron-cc.txt"
    assert hlo in message and log in message
    assert (out_dir / hlo).is_file() and (out_dir / log).is_file(), "left in out_dir for the failures folder"
    assert info.value.figures["kept_files"] == sorted([hlo, log])
    assert isinstance(info.value.__cause__, RuntimeError)


# -- load and generate -------------------------------------------------------------------------------
@pytest.mark.parametrize("batch", [1, 2])
def test_load_and_generate_through_the_adapter_greedy(stand_in, make_spec, tmp_path, batch, causal_contract):
    spec = make_spec(batch=batch)
    target = NxdiTarget()
    port = target.build_port(spec, None, torch.float32)
    out_dir = tmp_path / "artifact"
    out_dir.mkdir()
    result = target.compile(port, spec, out_dir)
    stand_in.CALLS.clear()

    model = target.load_compiled(spec, out_dir, result)
    generated = model.generate(PROMPTS, SamplingParams(max_new_tokens=4))

    names = stand_in.names()
    assert _subsequence(
        names,
        [
            "InferenceConfig.load",
            "app.__init__",
            "app.load",
            "HuggingFaceGenerationAdapter.__init__",
            "HuggingFaceGenerationAdapter.generate",
        ],
    )
    assert stand_in.find("InferenceConfig.load")[0] == {
        "cls": "TinyInferenceConfig",
        "model_path": str(out_dir.resolve()),
        "NXD_CPU_MODE": "0",
    }
    assert stand_in.find("app.__init__")[0]["model_path"] == str(spec.weights_dir)
    assert stand_in.find("app.load")[0]["path"] == str(out_dir.resolve())
    calls = stand_in.find("HuggingFaceGenerationAdapter.generate")
    assert len(calls) == -(-len(PROMPTS) // batch)
    for call in calls:
        assert call["kwargs"] == {
            "max_new_tokens": 4,
            "min_new_tokens": 4,
            "do_sample": False,
            "pad_token_id": 0,
        }
        assert call["NXD_CPU_MODE"] == "0"
        assert call["shape"][0] == batch
    kinds = [c["kind"] for c in stand_in.find("app.forward")]
    assert kinds.count("context_encoding") == len(calls)
    assert kinds.count("token_generation") == 3 * len(calls), (
        "every new token after the first is a decode step"
    )

    assert generated.tokens == [greedy_reference(port, p, 4) for p in PROMPTS]
    groups = [PROMPTS[i : i + batch] for i in range(0, len(PROMPTS), batch)]
    causal_contract([[len(p) for p in g] + [len(g[0])] * (batch - len(g)) for g in groups])
    assert generated.decode_steps == 3 * len(calls)
    assert generated.ttft_s > 0 and generated.decode_s > 0 and generated.total_s >= generated.decode_s
    assert generated.buckets_used == ["context_encoding_8", "token_generation_16"]


def test_generate_stops_at_eos_when_asked(stand_in, compiled, causal_contract):
    _, port, model = compiled
    eos = greedy_reference(port, PROMPTS[0], 1)[0]

    generated = model.generate(PROMPTS[:1], SamplingParams(max_new_tokens=4, eos_token_id=eos))

    assert generated.tokens == [[eos]]
    (call,) = stand_in.find("HuggingFaceGenerationAdapter.generate")
    assert call["kwargs"]["eos_token_id"] == eos and "min_new_tokens" not in call["kwargs"]
    causal_contract([[len(PROMPTS[0])]])


def test_generate_kwargs_map_the_sampling_settings():
    greedy = generate_kwargs(SamplingParams(max_new_tokens=5, suppress_token_ids=(0, 2)), pad_id=0)
    assert greedy == {
        "max_new_tokens": 5,
        "min_new_tokens": 5,
        "do_sample": False,
        "pad_token_id": 0,
        "suppress_tokens": [0, 2],
    }
    sampled = generate_kwargs(
        SamplingParams(max_new_tokens=5, temperature=0.7, top_k=20, top_p=0.9, eos_token_id=2), pad_id=1
    )
    # HF's warpers stay off (do_sample=False); NxDI's sampler alone applies T / top-k / top-p
    assert sampled == {"max_new_tokens": 5, "do_sample": False, "pad_token_id": 1, "eos_token_id": 2}


def test_top_k_zero_means_the_whole_vocabulary_for_nxdi():
    assert nxdi_top_k(SamplingParams(max_new_tokens=1, temperature=1.0, top_k=0), 512) == 512
    assert nxdi_top_k(SamplingParams(max_new_tokens=1, temperature=1.0, top_k=20), 512) == 20


def test_prompt_filling_a_bucket_exactly_is_reported_in_the_next_one(stand_in, compiled):
    _, _, model = compiled
    generated = model.generate([list(range(1, 9))], SamplingParams(max_new_tokens=2))  # 8 tokens, bucket 8
    assert "context_encoding_16" in generated.buckets_used  # NxDI picks by a strict <
    assert (
        nxdi_bucket(8, [8, 16]) == 16 and nxdi_bucket(16, [8, 16]) == 16 and nxdi_bucket(17, [8, 16]) is None
    )


def test_generate_fails_when_only_context_encoding_ever_runs(stand_in, compiled):
    _, _, model = compiled
    stand_in.OPTIONS["refeed"] = True  # the trap: re-feed the whole sequence from position 0

    with pytest.raises(StageFailure, match="never ran a token-generation graph"):
        model.generate(PROMPTS[:1], SamplingParams(max_new_tokens=4))


def test_prompt_too_long_for_the_sequence_is_a_clear_failure(stand_in, compiled):
    _, _, model = compiled
    with pytest.raises(StageFailure, match="exceeds port.max_seq_len"):
        model.generate([list(range(1, 16))], SamplingParams(max_new_tokens=20))


@pytest.mark.parametrize("batch", [1, 2])
def test_score_is_teacher_forced_through_token_generation(stand_in, compile_toy, causal_contract, batch):
    _, port, model = compile_toy(batch)
    seq = [5, 3, 7, 7, 1, 30, 2]

    (logits,) = model.score([seq])

    assert logits.shape == (len(seq), 32)
    torch.testing.assert_close(logits, toy_logits(port, torch.tensor([seq]))[0].float())
    kinds = [c["kind"] for c in stand_in.find("app.forward")]
    # two tokens of context encoding (one would return a padding position), then one step per token
    assert kinds == ["context_encoding"] + ["token_generation"] * (len(seq) - 2)
    assert stand_in.names()[0] == "app.reset"
    causal_contract([[2] * batch])
    steps = stand_in.find("app.forward")[1:]
    assert [c["position_ids"].tolist() for c in steps] == [[[t]] * batch for t in range(2, len(seq))]
    assert [c["attention_mask"].shape[1] for c in steps] == list(range(2, len(seq)))
    assert [c["input_ids"].tolist() for c in steps] == [[[token]] * batch for token in seq[2:]]


# -- the stand-in raising at each step ----------------------------------------------------------------
STEPS = {
    # stand-in call that raises -> what the adapter's message names
    "NeuronConfig.__init__": "TinyNeuronConfig(**",
    "load_pretrained_config": "load_pretrained_config(",
    "InferenceConfig.__init__": "TinyInferenceConfig(neuron_config, load_config=",
    "app.__init__": "NeuronTinyForCausalLM(",
    "app.to_cpu": "NeuronTinyForCausalLM.to_cpu()",
    "InferenceConfig.save": "NeuronTinyForCausalLM.compile() failed",  # NxDI's compile() saves first
    "app.get_compiler_args": "NeuronTinyForCausalLM.get_compiler_args()",
    "InferenceConfig.load": "TinyInferenceConfig.load(",
    "app.load": "NeuronTinyForCausalLM.load(",
    "HuggingFaceGenerationAdapter.__init__": "HuggingFaceGenerationAdapter(app)",
    "HuggingFaceGenerationAdapter.generate": "HuggingFaceGenerationAdapter.generate(do_sample=False)",
    "app.forward": "HuggingFaceGenerationAdapter.generate(do_sample=False)",
}


@pytest.mark.parametrize("step", sorted(STEPS))
def test_each_step_failing_gives_a_message_naming_it(stand_in, make_spec, tmp_path, step):
    spec = make_spec()
    target = NxdiTarget()
    out_dir = tmp_path / "artifact"
    out_dir.mkdir()
    stand_in.FAIL_AT.add(step)

    with pytest.raises(StageFailure) as info:
        port = target.build_port(spec, None, torch.float32)
        result = target.compile(port, spec, out_dir)
        target.load_compiled(spec, out_dir, result).generate(PROMPTS[:1], SamplingParams(max_new_tokens=2))

    message = str(info.value)
    assert message.startswith("nxdi: "), message
    assert STEPS[step] in message, message
    assert f"RuntimeError: stand-in {step.split('#')[0]} failed" in message
    assert isinstance(info.value.__cause__, RuntimeError)
