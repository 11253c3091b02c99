"""The ``nxdi`` target: drives AWS NxD Inference (NxDI) itself.

Every stage but ``compile`` runs NxDI's real code in NxD CPU mode (``to_cpu()``, gloo) where there
are no NeuronCores: weights (NxDI's own loader steps), components and the model (the NeuronBaseModel
eagerly), and generation and scoring through ``HuggingFaceGenerationAdapter`` over the CPU
application. Compile, load and device generation use NxDI's ``compile()`` / ``load()`` and need
NeuronCores. What has been run against real NxDI, and what only against a stand-in, is in
``kb/nxdi_target.md``.

Modules: ``runtime`` (lazy imports, CPU mode, error wrapping), ``config`` (NeuronConfig from the
spec, buckets), ``weights`` (the loader's conversion steps), ``generation`` (adapter, sampling,
scoring), ``device`` (compile, load, build_module).
"""

from __future__ import annotations

import importlib.metadata
import inspect
import os
import socket

import torch

from ...errors import AutoportError, StageFailure
from ...spec import PortSpec, import_port_class
from ..base import CompileResult
from . import weights as nxdi_weights
from .config import app_buckets, inference_config, neuron_config_kwargs, nxdi_bucket
from .device import cc_flags, compile_app, component_on_device, debug_files, load_app
from .generation import NxdiCompiledModel, generate_kwargs, nxdi_top_k
from .outputs import context_encoding_logits, first_tensor
from .runtime import NXDI, enter_cpu_mode, environ, nxdi, release_process_group, step

__all__ = [
    "NxdiCompiledModel",
    "NxdiTarget",
    "cc_flags",
    "component_args",
    "debug_files",
    "generate_kwargs",
    "neuron_config_kwargs",
    "nxdi_bucket",
    "nxdi_top_k",
]

SDK_DISTRIBUTIONS = ("neuronx-distributed-inference", "neuronx-distributed", "torch-neuronx", "neuronx-cc")
COMPONENTS_ENV = "AUTOPORT_NXDI_COMPONENTS"  # "device": component checks compile through build_module
APP_ATTR = "_autoport_nxdi_app"  # the application a port module belongs to (not a registered submodule)
# stages that run NxDI in CPU mode: they need NxDI, not NeuronCores
CPU_STAGES = ("weights", "component", "model", "generate[cpu]", "golden[cpu]", "sharding[tp=2]")
CPU_FALLBACK_STAGES = ("generate[cpu]", "golden[cpu]")


def _primary_output(value) -> torch.Tensor:
    tensor = first_tensor(value)
    if tensor is None:
        raise StageFailure(f"nxdi: cannot find a tensor in a {type(value).__name__} module output")
    return tensor


def component_args(module: torch.nn.Module, kind: str, inputs: dict) -> tuple:
    """Positional arguments for an NxDI component, by ``Component.call_kind``.

    NxDI's attention and decoder layers take ``(hidden_states, attention_mask, position_ids)`` with a
    boolean causal mask [b, 1, s, s]; a module without an ``attention_mask`` parameter (rotary
    embeddings) gets ``(hidden, position_ids)``."""
    hidden, positions = inputs["hidden_states"], inputs["position_ids"]
    if kind == "hf_args":
        return tuple(inputs["hf_args"])
    if kind == "input_ids":
        return (inputs["input_ids"],)
    if kind != "hidden_positions":
        return (hidden,)
    if "attention_mask" not in inspect.signature(module.forward).parameters:
        return (hidden, positions)
    batch, length = hidden.shape[:2]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    return (hidden, causal[None, None].expand(batch, 1, length, length), positions)


def app_of(port: torch.nn.Module):
    app = port.__dict__.get(APP_ATTR)
    if app is None:
        raise AutoportError(
            "nxdi: this module was not built by NxdiTarget.build_port (it has no NxDI application)"
        )
    return app


def cpu_tp_degree(spec: PortSpec) -> int:
    """CPU mode runs in one process (TP 1) unless torchrun started this one with WORLD_SIZE = tp."""
    return spec.port.tp_degree if os.environ.get("WORLD_SIZE") == str(spec.port.tp_degree) else 1


def build_cpu_app(spec: PortSpec, dtype: torch.dtype, tp_degree: int = 1):
    """NxDI's application for ``spec`` in CPU mode, after ``to_cpu()`` (NxDI loads the checkpoint)."""
    enter_cpu_mode()
    nxdi(f"{NXDI}.utils.hf_adapter")  # NxD's first import, in CPU mode, before the port's own
    app_cls = import_port_class(spec)
    config = inference_config(app_cls, spec, dtype, tp_degree=tp_degree, on_cpu=True)
    with step(f"{app_cls.__name__}({str(spec.weights_dir)!r}, config)"):
        app = app_cls(str(spec.weights_dir), config)
    # to_cpu() makes its own process group (unconditionally under torchrun): drop an earlier one
    release_process_group()
    # Alone (no torchrun), to_cpu() listens on MASTER_PORT or 29500: a second NxDI process on the
    # machine (another run, a verdict started from a test) would collide, so take a free port.
    port = {} if "WORLD_SIZE" in os.environ else {"MASTER_PORT": str(free_port())}
    with step(f"{app_cls.__name__}.to_cpu()"), environ(**port):
        app.to_cpu()
    return app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NxdiTarget:
    name = "nxdi"

    def __init__(self, components_on_device: bool | None = None):
        if components_on_device is None:
            components_on_device = os.environ.get(COMPONENTS_ENV) == "device"
        self.components_on_device = components_on_device
        self._import_error: str | None = None
        self._import_checked = False

    # -- availability and versions ---------------------------------------------------------------
    def unavailable_reason(self, stage: str | None = None) -> str | None:
        """Why NxDI cannot run here (or ``stage`` cannot: device stages need NeuronCores), else None."""
        if not self._import_checked:
            try:
                nxdi(f"{NXDI}.models.config")
                nxdi(f"{NXDI}.utils.hf_adapter")
            except Exception as exc:  # ImportError, but also driver and GLIBC errors raised on import
                self._import_error = f"{type(exc).__name__}: {exc}"
            self._import_checked = True
        if self._import_error:
            return f"neuronx-distributed-inference is not importable: {self._import_error}"
        if stage is None:
            return None
        from ...envcheck import DEVICE_RUNS_INSTEAD, check_environment

        if stage in CPU_FALLBACK_STAGES:  # stand-ins for the device stages, where there is no device
            device = check_environment("nxdi").unavailable_reason("nxdi", stage.split("[", 1)[0])
            return None if device else DEVICE_RUNS_INSTEAD
        if stage in CPU_STAGES:  # NxDI imports in this process: CPU mode needs nothing more
            return None
        return check_environment("nxdi").unavailable_reason("nxdi", stage)

    def stage_path(self, stage: str) -> str | None:
        """Where ``stage`` runs NxDI: "cpu" (CPU mode) or "device" (NeuronCores); None for the stages
        that check the host and the port's files without running NxDI."""
        base = stage.split("[", 1)[0]
        if base in ("env", "preflight", "hygiene"):
            return None
        if base == "component" and self.components_on_device:
            return "device"
        return "cpu" if stage in CPU_STAGES or base in CPU_STAGES else "device"

    def versions(self) -> dict[str, str]:
        found = {}
        for dist in SDK_DISTRIBUTIONS + ("transformers",):
            try:
                found[dist] = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                found[dist] = "not installed"
        found["torch"] = torch.__version__
        found["NEURON_CC_FLAGS"] = cc_flags(os.environ.get("NEURON_CC_FLAGS"))
        return found

    # -- eager port in NxD CPU mode ----------------------------------------------------------------
    def build_port(self, spec: PortSpec, hf_config, dtype: torch.dtype) -> torch.nn.Module:
        """The port's NeuronBaseModel after ``to_cpu()`` (NxDI loads the checkpoint itself there).

        ``hf_config`` is not used: NxDI reads the same config.json through load_pretrained_config."""
        app = build_cpu_app(spec, dtype, cpu_tp_degree(spec))
        model = app.context_encoding_model.model
        model.__dict__[APP_ATTR] = app
        return model.eval()

    def port_in_dtype(self, spec: PortSpec, port: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
        """The port in a low precision: NxDI's own CPU build in that dtype (the FP32 application
        holds a process group and cannot be deep-copied; NxDI casts the checkpoint as it loads)."""
        return self.build_port(spec, None, dtype)

    def conversion(self, port: torch.nn.Module, convert):
        """The checkpoint conversion as NxDI's loader runs it (see ``weights``)."""
        app = app_of(port)
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        return nxdi_weights.conversion(type(app), port, rank)

    def mapping_view(self, port: torch.nn.Module, hf_state: dict) -> tuple[dict, dict]:
        """(HF state dict with NxDI's prefix replacement, the model tensors a checkpoint fills)."""
        app_cls = type(app_of(port))
        return nxdi_weights.loader_view(app_cls, hf_state), nxdi_weights.wanted_state(port)

    def load_converted(self, port: torch.nn.Module, converted: dict) -> None:
        """Nothing to do: ``to_cpu()`` in build_port already loaded the checkpoint through NxDI."""

    @torch.inference_mode()
    def run_model(self, port: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
        """One context-encoding pass through NxDI; logits at every position."""
        logits = context_encoding_logits(app_of(port), port, input_ids)
        return logits[..., : getattr(port.config, "vocab_size", logits.shape[-1])]

    @torch.inference_mode()
    def run_component(self, module: torch.nn.Module, kind: str, inputs: dict) -> torch.Tensor:
        args = component_args(module, kind, inputs)
        if self.components_on_device:
            return component_on_device(module, args, _primary_output)
        with step(f"{type(module).__name__} forward ({kind}) in CPU mode"):
            return _primary_output(module(*args))

    # -- generation on the CPU application ---------------------------------------------------------
    def cpu_compiled_model(self, spec: PortSpec, port: torch.nn.Module) -> NxdiCompiledModel:
        """Generation and scoring through HuggingFaceGenerationAdapter over the CPU application."""
        return NxdiCompiledModel(app_of(port), spec, path="cpu", buckets=app_buckets(spec, on_cpu=True))

    # -- compile, load, generate on device ---------------------------------------------------------
    def compile(self, port: torch.nn.Module, spec: PortSpec, out_dir) -> CompileResult:
        """``App(weights, config).compile(out_dir)`` from the checkpoint (the eager ``port`` is not reused)."""
        return compile_app(spec, out_dir)

    def load_compiled(self, spec: PortSpec, out_dir, result: CompileResult) -> NxdiCompiledModel:
        return load_app(spec, out_dir)
