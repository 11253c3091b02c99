"""The ``nxdi`` target against NxDI's own code (NeuronLlamaForCausalLM) in CPU mode.

Each test covers a defect found by running the target against real NxDI (the stand-in package of
``tests/contract`` could not show any of them); the figures in the comments are what the code before
the fix gave."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pytest_autoport.generation import SamplingParams
from pytest_autoport.targets.nxdi import NxdiTarget, app_of
from pytest_autoport.targets.nxdi.config import app_buckets
from pytest_autoport.weight_mapping import check_mapping

PROMPT = [1, 307, 42, 99, 5, 17, 250, 3, 64, 128, 7, 300, 12, 45, 77, 8, 19, 400, 33, 2]  # 20 tokens


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def hf_greedy(hf, prompt: list[int], new: int) -> list[int]:
    out = hf.generate(torch.tensor([prompt]), max_new_tokens=new, min_new_tokens=new, do_sample=False)
    return out[0, len(prompt) :].tolist()


# -- binary stand-ins ---------------------------------------------------------------------------------
def test_binary_stand_ins_never_compute(real_nxdi_imports):
    import binary_stand_ins

    if "torch_neuronx" not in real_nxdi_imports:
        pytest.skip("a real torch_neuronx is installed")
    from torch_neuronx.utils import get_platform_target  # NxDI's own import lines
    from torch_neuronx.xla_impl.ops import RmsNorm, nki_jit

    assert get_platform_target() == binary_stand_ins.PLATFORM_TARGET
    with pytest.raises(binary_stand_ins.StandInCalledOnTensor):
        RmsNorm.apply(torch.ones(2))
    kernel = nki_jit(lambda x: x)  # module-level decorator use is fine ...
    with pytest.raises(binary_stand_ins.StandInCalledOnTensor):
        kernel(torch.ones(2))  # ... computing is not
    product = Path(__file__).parents[2] / "pytest_autoport"
    assert not any("binary_stand_ins" in p.read_text() for p in product.rglob("*.py"))


# -- CPU mode builds one model: one bucket of seq_len ----------------------------------------------------
def test_run_model_matches_hf_with_the_spec_buckets(llama_nxdi_spec, llama_port, hf_llama):
    assert llama_nxdi_spec.port.context_bucket_list == [16, 32, 64]  # several buckets, seq 64
    ids = torch.tensor([PROMPT])
    logits = NxdiTarget().run_model(llama_port, ids)
    # before: "The size of tensor a (64) must match the size of tensor b (32)"
    assert rel(logits, hf_llama(ids).logits) < 1e-5


# -- weights: NxDI's loader steps, "every HF tensor consumed" kept ----------------------------------------
def _mapping(spec, port, app_cls=None, edit_hf=None):
    from pytest_autoport.checkpoint import load_state_dict

    target = NxdiTarget()
    hf_state = load_state_dict(spec.weights_dir)
    if edit_hf:
        edit_hf(hf_state)
    app_cls = app_cls or type(app_of(port))
    convert = target.conversion(port, app_cls.convert_hf_to_neuron_state_dict)
    if app_cls is not type(app_of(port)):
        from pytest_autoport.targets.nxdi import weights as nxdi_weights

        convert = nxdi_weights.conversion(app_cls, port)
    view, wanted = target.mapping_view(port, hf_state)
    return check_mapping(convert, view, port.config, wanted), port.state_dict()


def test_weights_follow_nxdis_loader(llama_nxdi_spec, llama_port):
    report, state = _mapping(llama_nxdi_spec, llama_port)
    # before: TypeError (the conversion mutates its input), and rank_util / qkv_proj keys reported
    assert report.ok, report.message()
    assert not report.unused_hf and not report.missing and not report.unexpected
    assert any(".qkv_proj.q_proj." in k for k in report.converted), "NxD's pre-shard hooks ran"
    assert any(".rank_util." in k for k in report.converted)
    for key, tensor in report.converted.items():  # what to_cpu() loaded is exactly this
        assert torch.equal(state[key], tensor.to(state[key].dtype)), key
    assert {k for k in state if k not in report.converted} == {k for k in state if "kv_mgr." in k}


def test_weights_name_a_tensor_the_conversion_drops(llama_nxdi_spec, llama_port):
    app_cls = type(app_of(llama_port))

    class Dropping(app_cls):
        @staticmethod
        def convert_hf_to_neuron_state_dict(state_dict, config):
            del state_dict["layers.1.mlp.up_proj.weight"]
            return app_cls.convert_hf_to_neuron_state_dict(state_dict, config)

    report, _ = _mapping(llama_nxdi_spec, llama_port, app_cls=Dropping)
    assert "layers.1.mlp.up_proj.weight" in report.unused_hf
    assert "layers.1.mlp.up_proj.weight" in report.missing


def test_weights_name_the_tensor_a_misnamed_key_leaves_empty(llama_nxdi_spec, llama_port):
    app_cls = type(app_of(llama_port))

    class Misnaming(app_cls):
        @staticmethod
        def convert_hf_to_neuron_state_dict(state_dict, config):
            state_dict["layers.0.mlp.gate.weight"] = state_dict.pop("layers.0.mlp.gate_proj.weight")
            return app_cls.convert_hf_to_neuron_state_dict(state_dict, config)

    report, _ = _mapping(llama_nxdi_spec, llama_port, app_cls=Misnaming)
    assert report.missing == ["layers.0.mlp.gate_proj.weight"]  # NxD drops the misnamed key silently


def test_weights_follow_the_class_state_dict_prefix():
    from pytest_autoport.targets.nxdi.weights import loader_view

    class Gemma3Like:
        _STATE_DICT_MODEL_PREFIX = "language_model.model."
        _NEW_STATE_DICT_MODEL_PREFIX = ""

    view = loader_view(Gemma3Like, {"language_model.model.norm.weight": 1, "lm_head.weight": 2})
    assert view == {"norm.weight": 1, "lm_head.weight": 2}


# -- generation and teacher-forced scoring through the adapter over the CPU application ------------------
@pytest.fixture(scope="module")
def cpu_model(llama_nxdi_spec, llama_port):
    return NxdiTarget().cpu_compiled_model(llama_nxdi_spec, llama_port)


def test_score_matches_hf_at_every_position(cpu_model, hf_llama):
    seq = PROMPT[:12]
    (logits,) = cpu_model.score([seq])
    expected = hf_llama(torch.tensor([seq])).logits[0]
    per_position = [rel(logits[t], expected[t]) for t in range(len(seq))]
    # before: 0.07-0.69 per position (mask of length t + 1; position 0 from a padding position)
    assert max(per_position) < 1e-5, per_position
    kinds = [g.split("_")[0] for g, _ in cpu_model.calls[-(len(seq) - 1) :]]
    assert kinds == ["context"] + ["token"] * (len(seq) - 2)


def test_greedy_generation_matches_hf(cpu_model, hf_llama):
    result = cpu_model.generate([PROMPT[:7], PROMPT[5:16]], SamplingParams(max_new_tokens=10))
    assert result.tokens == [hf_greedy(hf_llama, PROMPT[:7], 10), hf_greedy(hf_llama, PROMPT[5:16], 10)]
    assert result.decode_steps == 2 * 9
    assert result.buckets_used == ["context_encoding_64", "token_generation_64"]
    assert app_buckets(cpu_model.spec, on_cpu=True) == ([64], [64])


def test_sampling_settings_reach_nxdis_sampler_once(cpu_model, monkeypatch):
    sampling = sys.modules["neuronx_distributed_inference.modules.generation.sampling"]
    seen = []
    forward = sampling.Sampler.forward

    def spy(self, token_logits, sampling_params, *args, **kwargs):
        seen.append((token_logits.clone(), sampling_params.clone(), self.global_topk))
        return forward(self, token_logits, sampling_params, *args, **kwargs)

    monkeypatch.setattr(sampling.Sampler, "forward", spy)
    recorded = []
    original = cpu_model.app.forward

    def record(*args, **kwargs):
        out = original(*args, **kwargs)
        recorded.append(out.logits[:, -1].float().clone())
        return out

    monkeypatch.setattr(cpu_model.app, "forward", record)
    monkeypatch.setattr(cpu_model.adapter, "forward", record)
    params = SamplingParams(max_new_tokens=3, temperature=0.5, top_k=0, top_p=0.9, seed=1)
    cpu_model.generate([PROMPT[:5]], params)
    logits, values, global_topk = seen[0]
    # before: HF's warper divided the logits by T, then NxDI's sampler again; top_k 0 = uniform over 256
    kept = torch.isfinite(logits)  # HF's min_new_tokens processor masks EOS, nothing else touches them
    assert int((~kept).sum()) <= 1
    torch.testing.assert_close(logits.float()[kept], recorded[0][kept])
    assert values[0].tolist() == pytest.approx([512, 0.9, 0.5])
    assert global_topk == 0


def test_near_zero_temperature_with_no_top_k_is_greedy(cpu_model, hf_llama):
    params = SamplingParams(max_new_tokens=8, temperature=1e-4, top_k=0, seed=3)
    result = cpu_model.generate([PROMPT[:6]], params)
    # before: top_k = 0 drew uniformly from NxDI's 256-token window
    assert result.tokens == [hf_greedy(hf_llama, PROMPT[:6], 8)]


# -- a second to_cpu() in a process that torchrun started --------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_to_cpu_twice_under_torchrun(llama_nxdi_spec, tmp_path):
    script = tmp_path / "twice.py"
    script.write_text(
        "import sys, torch\n"
        "from pytest_autoport.spec import load_spec\n"
        "from pytest_autoport.targets.nxdi import build_cpu_app\n"
        "import dataclasses\n"
        f"spec = load_spec({str(llama_nxdi_spec.path)!r}, {str(llama_nxdi_spec.project_root)!r}, check_imports=False)\n"
        f"spec = dataclasses.replace(spec, model=dataclasses.replace(spec.model, weights_path={str(llama_nxdi_spec.weights_dir)!r}))\n"
        "for _ in range(2):\n"
        "    build_cpu_app(spec, torch.float32, 1)\n"
        "print('built twice')\n"
    )
    env = dict(os.environ, WORLD_SIZE="1", RANK="0", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
    env["MASTER_PORT"] = str(_free_port())
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    # before: "trying to initialize the default process group twice!"
    assert done.returncode == 0, done.stderr[-2000:]
    assert "built twice" in done.stdout


def test_spec_shape_of_the_cpu_config(llama_nxdi_spec):
    from pytest_autoport.targets.nxdi import neuron_config_kwargs

    cpu = neuron_config_kwargs(llama_nxdi_spec, torch.float32, tp_degree=1, on_cpu=True)
    assert cpu["max_context_length"] == cpu["seq_len"] == 64 and cpu["enable_bucketing"] is False
    device = neuron_config_kwargs(
        dataclasses.replace(llama_nxdi_spec), torch.float32, tp_degree=1, on_cpu=False
    )
    assert device["context_encoding_buckets"] == [16, 32, 64]


# -- the whole verdict on a CPU-only machine ---------------------------------------------------------------
@pytest.mark.slow
def test_llama_nxdi_verdict_runs_every_stage_but_compile_on_cpu(make_project):
    project = make_project("llama_nxdi")
    project.run("-k", "not bfloat16 and not component", "-W", "ignore")
    statuses = project.statuses()
    assert statuses == {
        "env": "passed",
        "preflight": "passed",
        "hygiene": "passed",
        "weights": "passed",
        "model": "passed",
        "generate[cpu]": "passed",
        "golden[cpu]": "passed",
        "sharding[tp=2]": "passed",
        "compile": "skipped",
        "generate": "skipped",
        "golden": "skipped",
    }
    assert "no NeuronCores" in project.stage("compile")["message"]
    paths = {
        s["id"]: s["figures"].get("path") for s in project.results()["stages"] if s["status"] == "passed"
    }
    assert paths == {
        "env": None,
        "preflight": None,
        "hygiene": None,
        "weights": "cpu",
        "model": "cpu",
        "generate[cpu]": "cpu",
        "golden[cpu]": "cpu",
        "sharding[tp=2]": "cpu",
    }
    assert project.stage("golden[cpu]")["figures"]["teacher_forced_match"] == 1.0


@pytest.mark.slow
def test_user_port_with_swapped_mlp_projections_fails_at_the_mlp(make_project):
    project = make_project("llama_nxdi_port")
    project.replace(
        "llama_nxdi/modeling_llama_nxdi.py",
        "F.silu(self.gate_proj(x)) * self.up_proj(x)",
        "F.silu(self.up_proj(x)) * self.gate_proj(x)",
    )
    project.run("-k", "mlp and not bfloat16", "-W", "ignore")
    assert project.statuses() == {"component[mlp-layer0]": "failed", "component[mlp-layer1]": "failed"}
    assert project.stage("component[mlp-layer0]")["figures"]["path"] == "cpu"


# -- sharding[tp=2]: NxD's parallel layers in two gloo processes against tp 1 ------------------------------
@pytest.mark.slow
def test_sharding_stage_names_a_missing_all_reduce(make_project):
    project = make_project("llama_nxdi_port")
    project.replace(
        "llama_nxdi/modeling_llama_nxdi.py",
        "RowParallelLinear(i, h, bias=bias, input_is_parallel=True, dtype=dtype)",
        "RowParallelLinear(i, h, bias=bias, input_is_parallel=True, dtype=dtype, reduce_output=False)",
    )
    project.run("-k", "sharding or (mlp and not bfloat16)", "-W", "ignore")
    statuses = project.statuses()
    assert statuses["component[mlp-layer0]"] == "passed", "at tp 1 the missing all-reduce changes nothing"
    assert statuses["sharding[tp=2]"] == "failed"
    stage = project.stage("sharding[tp=2]")
    assert stage["figures"]["first_divergence"] == "layers.0.mlp"
    assert "first module whose tp=2 output differs from tp=1: layers.0.mlp" in stage["message"]


def test_a_rank_that_dies_stops_the_run_with_its_log(llama_nxdi_spec):
    from pytest_autoport.errors import StageFailure
    from pytest_autoport.targets.nxdi.sharding import run_sharded

    broken = dataclasses.replace(llama_nxdi_spec, path=Path("/nonexistent/spec.toml"))
    with pytest.raises(StageFailure, match=r"tp rank \d exited with code 1; the other ranks were stopped"):
        run_sharded(broken, torch.tensor([[1, 2, 3]]), [], 2, timeout_s=120)


# -- a second family: NxDI's own Qwen3 (q/k norms, tied head) ----------------------------------------------
def test_qwen3_weights_and_logits(tiny_weights):
    from transformers import Qwen3ForCausalLM

    from pytest_autoport.spec import load_spec

    repo = Path(__file__).parents[2]
    spec = load_spec(repo / "port_specs" / "qwen3_nxdi.toml", repo, check_imports=False)
    weights = str(tiny_weights("qwen3_nxdi"))
    spec = dataclasses.replace(spec, model=dataclasses.replace(spec.model, weights_path=weights))
    port = NxdiTarget().build_port(spec, None, torch.float32)
    report, _ = _mapping(spec, port)
    assert report.ok, report.message()  # the conversion leaves q_norm / k_norm behind: NxD drops them
    ids = torch.tensor([PROMPT])
    hf = Qwen3ForCausalLM.from_pretrained(weights, torch_dtype="float32").eval()
    assert rel(NxdiTarget().run_model(port, ids), hf(ids).logits) < 1e-5
