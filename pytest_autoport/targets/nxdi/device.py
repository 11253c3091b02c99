"""Device work: ``compile()``, ``load()`` and one component compiled alone (``build_module``).

Needs NeuronCores; here it is exercised only by contract tests against a stand-in NxDI.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import torch

from ...errors import StageFailure
from ...spec import PortSpec, import_port_class
from ..base import CompileResult
from .config import config_classes, inference_config
from .generation import NxdiCompiledModel
from .runtime import NXDI, environ, leave_cpu_mode, nxdi, step

CONFIG_FILE = "neuron_config.json"  # what InferenceConfig.save() writes (compile() does it itself)
COMPILED_FILE = "model.pt"  # what NeuronApplicationBase.compile() writes
# Inside out_dir, never out_dir itself: NxD's ModelBuilder empties its work dir before tracing.
COMPILER_WORKDIR = "compiler_workdir"
DEBUG_PATTERNS = ("*.pb", "*.hlo*", "log-neuron-cc*.txt", "*.log")
# Nothing in NxD / NxDI reads NEURON_CC_FLAGS: compiler flags reach neuronx-cc through the port's
# get_compiler_args(). The user's NEURON_CC_FLAGS are recorded (they change nothing NxDI builds,
# but a user may rely on a wrapper that reads them), never altered.


def cc_flags(user_flags: str | None) -> str:
    """The user's NEURON_CC_FLAGS as recorded in the artifact key (normalised whitespace)."""
    return " ".join((user_flags or "").split())


def debug_files(out_dir: Path) -> list[str]:
    """HLO and compiler logs under ``out_dir``, relative to it."""
    found = {p for pattern in DEBUG_PATTERNS for p in out_dir.rglob(pattern) if p.is_file()}
    return sorted(str(p.relative_to(out_dir)) for p in found)


def _compile_failure(call: str, exc: Exception, out_dir: Path, flags: str) -> StageFailure:
    """The failure of a compile, naming the HLO and logs left in ``out_dir`` (the artifact store
    moves a failed build's folder into its failures folder, so they survive)."""
    kept = debug_files(out_dir)
    if kept:
        listed = "\n    ".join(kept[:20]) + (f"\n    ... and {len(kept) - 20} more" if len(kept) > 20 else "")
        where = f"HLO and compiler logs kept with the failed artifact ({len(kept)} files):\n    {listed}"
    else:
        where = f"no HLO or compiler log was written (it failed before HLO generation); work dir {COMPILER_WORKDIR}/"
    return StageFailure(
        f"nxdi: {call} failed: {type(exc).__name__}: {exc}\n{where}",
        {"kept_files": kept, "neuron_cc_flags": flags},
    )


def _saved_attn_cls(out_dir: Path) -> str | None:
    """Read back the neuron_config.json compile() wrote; returns the attn_cls it records, if any."""
    path = out_dir / CONFIG_FILE
    if not path.is_file():
        raise StageFailure(f"nxdi: compile wrote no {CONFIG_FILE} into {out_dir}; load() needs it")
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise StageFailure(f"nxdi: {path} is not valid JSON: {exc}") from None
    attn_cls = saved.get("neuron_config", {}).get("attn_cls") if isinstance(saved, dict) else None
    if isinstance(attn_cls, dict):
        attn_cls = f"{attn_cls.get('__module__')}.{attn_cls.get('__name__')}"
    return attn_cls or None


def compile_app(spec: PortSpec, out_dir: Path) -> CompileResult:
    """``App(weights, config).compile(out_dir)`` from the checkpoint; compile() saves neuron_config.json."""
    out_dir = Path(out_dir).resolve()
    nxdi(f"{NXDI}.utils.hf_adapter")
    app_cls = import_port_class(spec)
    dtype = getattr(torch, spec.port.dtype)
    config = inference_config(app_cls, spec, dtype, tp_degree=spec.port.tp_degree, on_cpu=False)
    leave_cpu_mode()
    flags = cc_flags(os.environ.get("NEURON_CC_FLAGS"))
    workdir = out_dir / COMPILER_WORKDIR
    start = time.perf_counter()
    with environ(BASE_COMPILE_WORK_DIR=str(workdir)):
        with step(f"{app_cls.__name__}({str(spec.weights_dir)!r}, config)"):
            app = app_cls(str(spec.weights_dir), config)
        try:
            app.compile(str(out_dir))
        except Exception as exc:
            raise _compile_failure(f"{app_cls.__name__}.compile()", exc, out_dir, flags) from exc
    seconds = round(time.perf_counter() - start, 3)
    attn_cls = _saved_attn_cls(out_dir)
    graphs = {f"context_encoding_{b}": COMPILED_FILE for b in spec.port.context_bucket_list}
    graphs.update({f"token_generation_{b}": COMPILED_FILE for b in spec.port.token_bucket_list})
    with step(f"{app_cls.__name__}.get_compiler_args()"):
        port_args = app.get_compiler_args()
    return CompileResult(
        graphs=graphs,
        seconds_per_graph={"all_graphs": seconds},
        details={
            "compiler": "neuronx-cc (NxDI compile)",
            "path": "device",
            "neuron_cc_flags": flags,
            "port_compiler_args": port_args,
            "neuron_config": CONFIG_FILE,
            "attn_cls": attn_cls,
            "compiler_workdir": COMPILER_WORKDIR,
        },
    )


def load_app(spec: PortSpec, out_dir: Path) -> NxdiCompiledModel:
    out_dir = Path(out_dir).resolve()
    nxdi(f"{NXDI}.utils.hf_adapter")
    app_cls = import_port_class(spec)
    config_cls, _ = config_classes(app_cls)
    with step(f"{config_cls.__name__}.load({str(out_dir)!r})"):
        config = config_cls.load(str(out_dir))
    leave_cpu_mode()
    with step(f"{app_cls.__name__}({str(spec.weights_dir)!r}, config)"):
        app = app_cls(str(spec.weights_dir), config)
    with step(f"{app_cls.__name__}.load({str(out_dir)!r})"):
        app.load(str(out_dir))
    return NxdiCompiledModel(app, spec, path="device")


def component_on_device(module: torch.nn.Module, args: tuple, first_tensor) -> torch.Tensor:
    """Compile one component alone with NxDI's build_module; it is rebuilt as ``cls(config=...)``."""
    config = getattr(module, "config", None)
    name = type(module).__name__
    if config is None:
        raise StageFailure(f"nxdi: {name} keeps no .config, so build_module cannot rebuild it on device")
    testing = nxdi(f"{NXDI}.utils.testing")
    leave_cpu_mode()
    with tempfile.TemporaryDirectory(prefix="autoport-nxdi-component-") as tmp:
        checkpoint = Path(tmp) / "checkpoint.pt"
        torch.save(module.state_dict(), checkpoint)
        with step(f"build_module({name})"):
            neuron_module = testing.build_module(
                type(module),
                [args],
                module_init_kwargs={"config": config},
                tp_degree=config.neuron_config.tp_degree,
                compiler_workdir=str(Path(tmp) / COMPILER_WORKDIR),
                checkpoint_path=str(checkpoint),
            )
        with step(f"{name} on device"):
            return first_tensor(neuron_module(*args))
