"""The portable reference target: plain PyTorch ports, graphs captured with torch.export."""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..decode_forcing import DecodeLogits, decode_teacher_forced
from ..errors import StageFailure
from ..generation import SamplingParams, StaticGraphs, generate, score
from ..kv_cache import kv_cache_buffers, reset_kv_cache, written_buffers
from ..progress import progress
from ..spec import PortSpec, import_port_class
from .base import CompiledModel, CompileResult, GenerationResult
from .graph_loading import GraphsOnDemand, load_exported
from .shared_weights import load_weights, save_weights, shared_tensors, strip_program

# the on-disk layout of a compiled artifact; part of its key, so entries of another layout are rebuilt
# (2: graphs saved without weights, one weights.safetensors shared by all of them)
ARTIFACT_LAYOUT = 2


@dataclass(frozen=True)
class TorchNeuronConfig:
    """The static-shape settings a torch-target port reads from ``config.neuron_config``."""

    batch_size: int
    max_seq_len: int
    context_buckets: tuple[int, ...]
    torch_dtype: torch.dtype
    tp_degree: int = 1


class TorchTarget:
    name = "torch"
    artifact_layout = ARTIFACT_LAYOUT

    def unavailable_reason(self, stage: str | None = None) -> str | None:
        return None

    def mapping_view(self, port, hf_state):
        return hf_state, port.state_dict()

    def load_converted(self, port, converted):
        port.load_state_dict(converted, strict=True)

    def versions(self) -> dict[str, str]:
        import transformers

        return {"torch": torch.__version__, "transformers": transformers.__version__}

    def build_port(self, spec: PortSpec, hf_config, dtype: torch.dtype) -> torch.nn.Module:
        config = copy.deepcopy(hf_config)
        p = spec.port
        config.neuron_config = TorchNeuronConfig(
            batch_size=p.batch_size,
            max_seq_len=p.max_seq_len,
            context_buckets=tuple(p.context_bucket_list),
            torch_dtype=dtype,
            tp_degree=p.tp_degree,
        )
        port_cls = import_port_class(spec)
        with torch.device("cpu"):
            port = port_cls(config)
        return port.to(dtype).eval()

    @torch.inference_mode()
    def run_model(self, port, input_ids):
        reset_kv_cache(port)
        positions = torch.arange(input_ids.shape[1]).expand_as(input_ids).contiguous()
        return port(input_ids, positions)

    def buffers_written(self, port, input_ids, decoder_input_ids=None) -> list[str]:
        """The buffers one context-encoding step from position 0 writes (caches left as they were)."""

        def forward():
            if decoder_input_ids is None:
                port(input_ids, torch.arange(input_ids.shape[1]).expand_as(input_ids).contiguous())
                return
            mask = torch.ones_like(input_ids)
            positions = torch.arange(decoder_input_ids.shape[1]).expand_as(decoder_input_ids).contiguous()
            port(decoder_input_ids, positions, port.encode(input_ids, mask), mask)

        return written_buffers(port, forward)

    @torch.inference_mode()
    def run_seq2seq(self, port, input_ids, decoder_input_ids):
        """Encoder-decoder: ``encode`` the input, then the decoder from position 0 (fresh caches)."""
        reset_kv_cache(port)
        mask = torch.ones_like(input_ids)
        encoder_hidden = port.encode(input_ids, mask)
        positions = torch.arange(decoder_input_ids.shape[1]).expand_as(decoder_input_ids).contiguous()
        return port(decoder_input_ids, positions, encoder_hidden, mask)

    @torch.inference_mode()
    def run_component(self, module, kind, inputs):
        reset_kv_cache(module)
        if kind == "hf_args":
            return module(*inputs["hf_args"], **inputs["hf_kwargs"])
        if kind == "input_ids":
            return module(inputs["input_ids"])
        if kind == "hidden_positions":
            return module(inputs["hidden_states"], inputs["position_ids"])
        if kind == "hidden_encoder":
            return module(inputs["hidden_states"], inputs["encoder_hidden_states"])
        if kind == "hidden_positions_encoder":
            return module(inputs["hidden_states"], inputs["position_ids"], inputs["encoder_hidden_states"])
        return module(inputs["hidden_states"])

    def compile(self, port, spec: PortSpec, out_dir: Path) -> CompileResult:
        if spec.port.is_encoder_decoder:
            return self._compile_seq2seq(port, spec, out_dir)
        compiler = spec.port.compiler
        weights, stripped = _write_weights(port, out_dir)
        graphs, seconds = {}, {}
        for graph_name, seq, cache_len in progress(graph_shapes(spec), desc=f"compile {spec.name}"):
            example = (
                torch.zeros(spec.port.batch_size, seq, dtype=torch.long),
                torch.arange(seq).expand(spec.port.batch_size, seq).contiguous(),
            )
            graphs[graph_name], seconds[graph_name] = capture(
                BucketGraph(port, cache_len), example, out_dir, graph_name, compiler, stripped
            )
        return CompileResult(
            graphs=graphs,
            seconds_per_graph=seconds,
            details={"compiler": compiler, "kv_cache": cache_layout(port), "weights": weights},
        )

    def _compile_seq2seq(self, port, spec: PortSpec, out_dir: Path) -> CompileResult:
        """An encoder graph per context bucket, decoder context-encoding graphs (encoder output padded
        to max_seq_len source slots; they fill the cross-attention cache) and decoder token-generation
        graphs, the decoder graphs sharing one set of caches."""
        p = spec.port
        if p.compiler != "export":
            raise StageFailure(
                f'port.compiler = {p.compiler!r} is not supported for encoder-decoder ports yet; use "export"'
            )
        batch, hidden = p.batch_size, port.config.hidden_size
        weights, stripped = _write_weights(port, out_dir)
        graphs, seconds = {}, {}
        shapes = [(f"encoder_{b}", b) for b in p.context_bucket_list]
        shapes += [(name, seq) for name, seq, _ in graph_shapes(spec)]
        for graph_name, seq in shapes:
            ids = torch.zeros(batch, seq, dtype=torch.long)
            if graph_name.startswith("encoder_"):
                module, example = EncoderGraph(port), (ids, torch.ones(batch, seq, dtype=torch.long))
            else:
                positions = torch.arange(seq).expand(batch, seq).contiguous()
                cache_len = (
                    seq if graph_name.startswith("context_encoding_") else int(graph_name.rsplit("_", 1)[1])
                )
                if graph_name.startswith("context_encoding_"):
                    encoder_hidden = torch.zeros(
                        batch, p.max_seq_len, hidden, dtype=next(port.parameters()).dtype
                    )
                    encoder_mask = torch.ones(batch, p.max_seq_len, dtype=torch.long)
                    module = DecoderContextGraph(port, cache_len)
                    example = (ids, positions, encoder_hidden, encoder_mask)
                else:
                    module, example = BucketGraph(port, cache_len), (ids, positions)
            graphs[graph_name], seconds[graph_name] = capture(
                module, example, out_dir, graph_name, "export", stripped
            )
        details = {
            "compiler": p.compiler,
            "kv_cache": cache_layout(port),
            "weights": weights,
            "architecture": p.architecture,
            "decoder_start_token_id": port.config.decoder_start_token_id,
            "pad_token_id": port.config.pad_token_id or 0,
        }
        return CompileResult(graphs=graphs, seconds_per_graph=seconds, details=details)

    def cpu_compiled_model(self, spec: PortSpec, port: torch.nn.Module) -> CompiledModel:
        """The eager port behind the compiled model's interface, nothing captured: every bucket runs
        ``port`` itself with that bucket's cache reach, on the port's own KV-cache buffers."""
        if spec.port.is_encoder_decoder:
            raise StageFailure("CPU mode (no compilation) runs decoder-only ports; compile this one")
        graphs = {name: BucketGraph(port, cache_len) for name, _, cache_len in graph_shapes(spec)}
        return TorchCompiledModel(spec, graphs, kv_cache_buffers(BucketGraph(port, 0)))

    def load_compiled(self, spec: PortSpec, out_dir: Path, result: CompileResult) -> CompiledModel:
        if spec.port.is_encoder_decoder:
            return TorchSeq2SeqCompiledModel.load(spec, out_dir, result)
        if result.details.get("compiler") == "aoti":
            return TorchCompiledModel.from_aoti(spec, out_dir, result)
        cache = new_cache(result)
        weights = load_weights(out_dir, result.details["weights"])
        return TorchCompiledModel(spec, load_exported(out_dir, result, weights, cache), cache, weights)


def _write_weights(port: torch.nn.Module, out_dir: Path) -> tuple[dict, set[str]]:
    """Write the port's weights once for all its graphs: (their record for the loader, the names of
    every tensor the saved graphs leave out: the weights and the KV caches)."""
    caches = set(cache_layout(port))
    tensors = shared_tensors(BucketGraph(port, 0), exclude=caches)
    return save_weights(tensors, out_dir), set(tensors) | caches


def capture(
    module: torch.nn.Module, example: tuple, out_dir: Path, graph_name: str, compiler: str, stripped: set[str]
):
    """Capture ``module`` on ``example`` with torch.export and write it as ``{graph_name}.pt2``: the
    exported program, or with ``compiler="aoti"`` its AOTInductor package, either without the tensors
    named in ``stripped`` (bound in at load). Returns (file name, seconds)."""
    t0 = time.perf_counter()
    with torch.no_grad():
        program = torch.export.export(module, example, strict=False)
    file_name = f"{graph_name}.pt2"
    if compiler == "aoti":
        own = {
            n: t for n, t in program.constants.items() if n not in stripped and isinstance(t, torch.Tensor)
        }
        if own:  # constants made inside forward: this graph's alone, so kept beside it
            save_weights(own, out_dir, f"{graph_name}.constants.safetensors")
        torch._inductor.aoti_compile_and_package(
            program,
            package_path=str(out_dir / file_name),
            inductor_configs={"aot_inductor.package_constants_in_so": False},
        )
    else:
        strip_program(program, stripped)
        torch.export.save(program, out_dir / file_name)
    return file_name, round(time.perf_counter() - t0, 3)


def cache_layout(port: torch.nn.Module) -> dict[str, dict]:
    """Shape and dtype of each of the port's KV-cache buffers, by name."""
    return {
        name: {"shape": list(buf.shape), "dtype": str(buf.dtype).removeprefix("torch.")}
        for name, buf in kv_cache_buffers(BucketGraph(port, 0)).items()
    }


def new_cache(result: CompileResult) -> dict[str, torch.Tensor]:
    """Zeroed KV-cache tensors, one set shared by all graphs of a compiled port."""
    return {
        name: torch.zeros(meta["shape"], dtype=getattr(torch, meta["dtype"]))
        for name, meta in result.details["kv_cache"].items()
    }


def graph_shapes(spec: PortSpec) -> list[tuple[str, int, int]]:
    """(graph name, input length, cache slots read) for every bucket."""
    shapes = [(f"context_encoding_{b}", b, b) for b in spec.port.context_bucket_list]
    return shapes + [(f"token_generation_{b}", 1, b) for b in spec.port.token_bucket_list]


class BucketGraph(torch.nn.Module):
    """The port with one bucket's cache reach baked in, which is what gets captured."""

    def __init__(self, port: torch.nn.Module, cache_len: int):
        super().__init__()
        self.port = port
        self.cache_len = cache_len

    def forward(self, input_ids, position_ids):
        return self.port(input_ids, position_ids, cache_len=self.cache_len)


class TorchCompiledModel:
    """Loaded graphs that share one set of KV-cache tensors, as NxDI's graphs share device state."""

    def __init__(
        self, spec: PortSpec, graphs: dict, cache: dict[str, torch.Tensor], weights: dict | None = None
    ):
        self.spec = spec
        self.graphs = graphs
        self.cache = cache
        self.weights = weights or {}  # the one copy of the weights every graph uses, by name

    @classmethod
    def from_aoti(cls, spec: PortSpec, out_dir: Path, result: CompileResult):
        """AOTInductor packages built without their constants: each is handed the one memory-mapped
        copy of the weights and the shared caches as user-managed constants (no copy)."""
        cache = new_cache(result)
        weights = load_weights(out_dir, result.details["weights"])
        shared = {**weights, **cache}
        graphs = {}
        for name, file in result.graphs.items():
            graph = graphs[name] = torch._inductor.aoti_load_package(str(out_dir / file))
            own = out_dir / f"{name}.constants.safetensors"
            constants = {**shared, **(load_weights(own.parent, {"file": own.name}) if own.exists() else {})}
            wanted = graph.get_constant_fqns()
            missing = [fqn for fqn in wanted if fqn not in constants]
            if missing:
                raise StageFailure(
                    f"{out_dir / file}: the shared weight store lacks {', '.join(missing[:5])}"
                )
            graph.load_constants(
                {fqn: constants[fqn] for fqn in wanted}, check_full_update=True, user_managed=True
            )
        return cls(spec, graphs, cache, weights)

    def _reset(self):
        for buf in self.cache.values():
            buf.zero_()

    def _by_bucket(self, prefix: str) -> GraphsOnDemand:
        """Bucket size -> graph for the graphs named ``prefix<size>`` (each loaded when first run)."""
        names = {int(n.rsplit("_", 1)[1]): n for n in self.graphs if n.startswith(prefix)}
        return GraphsOnDemand(names, lambda bucket: self.graphs[names[bucket]])

    def _graphs(self) -> StaticGraphs:
        return StaticGraphs(
            context=self._by_bucket("context_encoding_"),
            token=self._by_bucket("token_generation_"),
            reset_cache=self._reset,
            batch_size=self.spec.port.batch_size,
            max_seq_len=self.spec.port.max_seq_len,
        )

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], params: SamplingParams) -> GenerationResult:
        for name in self.graphs:  # every graph read first: ttft and tokens/s time generation alone
            self.graphs[name]
        return generate(prompts, params, self._graphs())

    @torch.inference_mode()
    def score(self, sequences: list[list[int]]) -> list[torch.Tensor]:
        return score(sequences, self._graphs())

    @torch.inference_mode()
    def decode_teacher_forced(self, prompts: list[list[int]], continuations: list[list[int]]) -> DecodeLogits:
        """Every decode step's logits with the continuation fed one token at a time through the
        token-generation graphs (see :mod:`pytest_autoport.decode_forcing`); encoder-decoder: ``prompts``
        are the encoder inputs and the decoder starts from its start token."""
        return decode_teacher_forced(prompts, continuations, self._graphs())


class EncoderGraph(torch.nn.Module):
    """Encoder-decoder: the port's encoder over one context bucket."""

    def __init__(self, port: torch.nn.Module):
        super().__init__()
        self.port = port

    def forward(self, input_ids, attention_mask):
        return self.port.encode(input_ids, attention_mask)


class DecoderContextGraph(torch.nn.Module):
    """Encoder-decoder: decoder context encoding, which also fills the cross-attention cache."""

    def __init__(self, port: torch.nn.Module, cache_len: int):
        super().__init__()
        self.port = port
        self.cache_len = cache_len

    def forward(self, input_ids, position_ids, encoder_hidden, encoder_mask):
        return self.port(input_ids, position_ids, encoder_hidden, encoder_mask, cache_len=self.cache_len)


class TorchSeq2SeqCompiledModel(TorchCompiledModel):
    """Encoder graphs plus decoder graphs; the decoder graphs share the self- and cross-attention caches."""

    @classmethod
    def load(cls, spec: PortSpec, out_dir: Path, result: CompileResult):
        cache = new_cache(result)
        weights = load_weights(out_dir, result.details["weights"])
        model = cls(spec, load_exported(out_dir, result, weights, cache), cache, weights)
        model.decoder_start_id = result.details["decoder_start_token_id"]
        model.pad_id = result.details.get("pad_token_id", 0)
        return model

    def _graphs(self) -> StaticGraphs:
        return dataclasses.replace(
            super()._graphs(),
            encoder=self._by_bucket("encoder_"),
            decoder_start_id=self.decoder_start_id,
            pad_id=self.pad_id,
        )

    @torch.inference_mode()
    def score(self, sequences: list[list[int]], sources: list[list[int]] | None = None) -> list[torch.Tensor]:
        """Teacher forcing of decoder ``sequences`` (start token first) given encoder ``sources``."""
        return score(sequences, self._graphs(), sources)
