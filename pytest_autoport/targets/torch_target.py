"""The portable reference target: plain PyTorch ports, graphs captured with torch.export."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..generation import greedy_generate
from ..spec import PortSpec, import_port_class
from .base import CompiledModel, CompileResult, GenerationResult

POSITIONAL_KINDS = {"attention", "self_attn", "decoder_layer", "layer"}
TOKEN_KINDS = {"embedding", "embed_tokens"}


@dataclass(frozen=True)
class TorchNeuronConfig:
    """The static-shape settings a torch-target port reads from ``config.neuron_config``."""

    batch_size: int
    max_seq_len: int
    context_buckets: tuple[int, ...]
    torch_dtype: torch.dtype
    tp_degree: int = 1


def kv_cache_buffers(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: buf for name, buf in module.named_buffers() if name.rsplit(".", 1)[-1].endswith("_cache")}


def reset_kv_cache(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for buf in kv_cache_buffers(module).values():
            buf.zero_()


class TorchTarget:
    name = "torch"

    def unavailable_reason(self) -> str | None:
        return None

    def versions(self) -> dict[str, str]:
        import transformers

        return {"torch": torch.__version__, "transformers": transformers.__version__}

    def build_port(self, spec: PortSpec, hf_config, dtype: torch.dtype) -> torch.nn.Module:
        config = copy.deepcopy(hf_config)
        p = spec.port
        config.neuron_config = TorchNeuronConfig(
            batch_size=p.batch_size,
            max_seq_len=p.max_seq_len,
            context_buckets=tuple(p.context_buckets),
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

    @torch.inference_mode()
    def run_component(self, module, kind, inputs):
        reset_kv_cache(module)
        if kind in TOKEN_KINDS:
            return module(inputs["input_ids"])
        if kind in POSITIONAL_KINDS:
            return module(inputs["hidden_states"], inputs["position_ids"])
        return module(inputs["hidden_states"])

    def compile(self, port, spec: PortSpec, out_dir: Path) -> CompileResult:
        batch = spec.port.batch_size
        graphs, seconds = {}, {}
        shapes = {f"context_encoding_{b}": b for b in spec.port.context_buckets}
        shapes["token_generation"] = 1
        for graph_name, seq in shapes.items():
            example = (
                torch.zeros(batch, seq, dtype=torch.long),
                torch.arange(seq).expand(batch, seq).contiguous(),
            )
            t0 = time.perf_counter()
            with torch.no_grad():
                program = torch.export.export(port, example, strict=False)
            file_name = f"{graph_name}.pt2"
            torch.export.save(program, out_dir / file_name)
            graphs[graph_name] = file_name
            seconds[graph_name] = round(time.perf_counter() - t0, 3)
        return CompileResult(graphs=graphs, seconds_per_graph=seconds, details={"compiler": "export"})

    def load_compiled(self, spec: PortSpec, out_dir: Path, result: CompileResult) -> CompiledModel:
        modules = {name: torch.export.load(out_dir / file).module() for name, file in result.graphs.items()}
        return TorchCompiledModel(spec, modules)


class TorchCompiledModel:
    """Loaded graphs that share one set of KV-cache tensors, as NxDI's graphs share device state."""

    def __init__(self, spec: PortSpec, modules: dict[str, torch.nn.Module]):
        self.spec = spec
        self.modules = modules
        first = next(iter(modules.values()))
        self.cache = {name: torch.zeros_like(buf) for name, buf in kv_cache_buffers(first).items()}
        for module in modules.values():
            for name, shared in self.cache.items():
                owner, _, attr = name.rpartition(".")
                setattr(module.get_submodule(owner) if owner else module, attr, shared)

    def _reset(self):
        for buf in self.cache.values():
            buf.zero_()

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], max_new_tokens: int) -> GenerationResult:
        context = {int(n.rsplit("_", 1)[1]): m for n, m in self.modules.items() if n.startswith("context_encoding_")}
        return greedy_generate(
            prompts,
            max_new_tokens,
            context_graphs=context,
            token_graph=self.modules["token_generation"],
            reset_cache=self._reset,
            batch_size=self.spec.port.batch_size,
            max_seq_len=self.spec.port.max_seq_len,
        )
