"""The ``nxdi`` target: drives AWS NxD Inference (NxDI) itself, on machines that have the Neuron SDK.

Eager stages (weights, component, model) run the port in NxD CPU mode (``to_cpu()``, gloo, one
process); compile and generate use NxDI's own ``compile()`` / ``load()`` and its
``HuggingFaceGenerationAdapter``, so the token-generation graph and its KV cache really run. The
KV cache and the graphs live inside NxDI; this module only calls its public API.

Nothing from the Neuron SDK is imported at module level: it does not import without the SDK (its
config module already needs torch_neuronx). NxD reads ``NXD_CPU_MODE`` (once at import before
neuronx-distributed 0.11, at each call since), so it is set before the first NxD import and switched
off again before device work.

Here this module is exercised only by contract tests against a stand-in package
(``tests/contract``); what that does and does not show is in ``kb/nxdi_target.md``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import json
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..buckets import smallest_fitting
from ..errors import AutoportError, StageFailure, TargetUnavailable
from ..spec import PortSpec, import_port_class
from .base import CompileResult, GenerationResult

if TYPE_CHECKING:
    from ..generation import SamplingParams

NXDI = "neuronx_distributed_inference"
SDK_DISTRIBUTIONS = ("neuronx-distributed-inference", "neuronx-distributed", "torch-neuronx", "neuronx-cc")
CONFIG_FILE = "neuron_config.json"  # what InferenceConfig.save() writes
COMPILED_FILE = "model.pt"  # what NeuronApplicationBase.compile() writes
# Inside out_dir, never out_dir itself: NxD's ModelBuilder empties its work dir before tracing.
COMPILER_WORKDIR = "compiler_workdir"
# Never reuse a failed compilation from the persistent Neuron cache (a failure mode seen in the field).
EXTRA_CC_FLAGS = ("--retry_failed_compilation",)
DEBUG_PATTERNS = ("*.pb", "*.hlo*", "log-neuron-cc*.txt", "*.log")
COMPONENTS_ENV = "AUTOPORT_NXDI_COMPONENTS"  # "device": component checks compile through build_module
APP_ATTR = "_autoport_nxdi_app"  # the application a port module belongs to (not a registered submodule)


# -- importing NxD lazily, in the right mode -------------------------------------------------------
def _nxd_imported() -> bool:
    return any(name in sys.modules for name in ("neuronx_distributed", NXDI))


def _nxdi(module: str):
    """Import an NxDI module; before the first NxD import of the process, CPU mode is switched on."""
    if not _nxd_imported():
        os.environ["NXD_CPU_MODE"] = "1"
    return importlib.import_module(module)


def _frozen_cpu_mode():
    """True/False where an old neuronx-distributed (< 0.11) fixed CPU mode at import, else None."""
    return getattr(sys.modules.get("neuronx_distributed.utils"), "CPU_MODE", None)


def _enter_cpu_mode() -> None:
    os.environ["NXD_CPU_MODE"] = "1"
    if _frozen_cpu_mode() is False:
        raise TargetUnavailable(
            "this neuronx-distributed reads NXD_CPU_MODE once, at import, and was imported in device mode: "
            "run the eager stages (weights, component, model) in their own pytest process"
        )


def _leave_cpu_mode() -> None:
    """Device work: tear down the gloo group ``to_cpu()`` made (compile traces with its own) and leave CPU mode."""
    if _frozen_cpu_mode() is True:
        raise TargetUnavailable(
            "this neuronx-distributed reads NXD_CPU_MODE once, at import, and was imported in CPU mode: "
            "run the device stages (compile, generate, golden) in their own pytest process"
        )
    if os.environ.get("NXD_CPU_MODE") == "1":
        testing = _nxdi(f"{NXDI}.utils.testing")
        try:
            testing.destroy_cpu_env()
        except ModuleNotFoundError as exc:  # its last step imports fairscale, a test-only dependency
            if exc.name != "fairscale":
                raise
    os.environ["NXD_CPU_MODE"] = "0"


@contextmanager
def _step(what: str):
    """Turn an NxDI exception into a StageFailure that names the API call that raised it."""
    try:
        yield
    except AutoportError:
        raise
    except Exception as exc:
        raise StageFailure(f"nxdi: {what} failed: {type(exc).__name__}: {exc}") from exc


@contextmanager
def _environ(**values: str):
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


def cc_flags(user_flags: str | None) -> str:
    """The user's NEURON_CC_FLAGS, kept as they are, with ours appended where missing."""
    flags = (user_flags or "").split()
    return " ".join(flags + [f for f in EXTRA_CC_FLAGS if f not in flags])


# -- configuration --------------------------------------------------------------------------------
def neuron_config_kwargs(spec: PortSpec, dtype: torch.dtype, *, tp_degree: int, on_cpu: bool) -> dict:
    """NeuronConfig arguments from the spec: static batch, sequence length and buckets."""
    p = spec.port
    return {
        "batch_size": p.batch_size,
        "seq_len": p.max_seq_len,
        "max_context_length": p.context_bucket_list[-1],
        "enable_bucketing": True,
        "context_encoding_buckets": list(p.context_bucket_list),
        "token_generation_buckets": list(p.token_bucket_list),
        "torch_dtype": dtype,
        "tp_degree": tp_degree,
        "on_cpu": on_cpu,
    }


def _config_classes(app_cls):
    with _step(f"{app_cls.__name__}.get_config_cls()"):
        config_cls = app_cls.get_config_cls()
    with _step(f"{config_cls.__name__}.get_neuron_config_cls()"):
        neuron_config_cls = config_cls.get_neuron_config_cls()
    return config_cls, neuron_config_cls


def _inference_config(app_cls, spec: PortSpec, dtype: torch.dtype, *, tp_degree: int, on_cpu: bool):
    hf_adapter = _nxdi(f"{NXDI}.utils.hf_adapter")
    config_cls, neuron_config_cls = _config_classes(app_cls)
    kwargs = neuron_config_kwargs(spec, dtype, tp_degree=tp_degree, on_cpu=on_cpu)
    with _step(f"{neuron_config_cls.__name__}(**{kwargs})"):
        neuron_config = neuron_config_cls(**kwargs)
    weights = str(spec.weights_dir)
    with _step(f"{config_cls.__name__}(neuron_config, load_config=load_pretrained_config({weights!r}))"):
        return config_cls(neuron_config, load_config=hf_adapter.load_pretrained_config(weights))


def attn_cls_problem(neuron_config, app_cls) -> str | None:
    """Why the NeuronConfig's ``attn_cls`` would break token generation, or None.

    NxDI's base NeuronConfig defaults ``attn_cls`` to the *name* of Llama's attention; a port must
    set it to its own attention class in its NeuronConfig subclass (only NxDI's built-in models may
    keep a name)."""
    attn_cls = getattr(neuron_config, "attn_cls", None)
    if inspect.isclass(attn_cls):
        return None
    if isinstance(attn_cls, str) and attn_cls and app_cls.__module__.startswith(f"{NXDI}."):
        return None
    state = (
        "is not set"
        if attn_cls is None
        else f"is {attn_cls!r}, NxDI's default, not the port's attention class"
    )
    return (
        f"{type(neuron_config).__name__}.attn_cls {state}. Token generation builds its attention from "
        "neuron_config.attn_cls (the most common token-generation failure): in the port's NeuronConfig "
        "subclass, set `self.attn_cls = <the port's attention class>` after `super().__init__(**kwargs)`, "
        "and return that subclass from the InferenceConfig's get_neuron_config_cls()"
    )


def _check_saved_config(out_dir: Path) -> str:
    """Read back neuron_config.json; returns the attn_cls it records."""
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
    if not attn_cls:
        raise StageFailure(
            f"nxdi: {path} records no neuron_config.attn_cls; token generation would not know its attention"
        )
    return attn_cls


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


# -- running modules ----------------------------------------------------------------------------
def _first_tensor(value) -> torch.Tensor:
    """The primary output of an NxDI module: a tensor, ``.hidden_states`` (attention), or a tuple's head."""
    if isinstance(value, torch.Tensor):
        return value
    hidden = getattr(value, "hidden_states", None)
    if isinstance(hidden, torch.Tensor):
        return hidden
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    raise StageFailure(f"nxdi: cannot find a tensor in a {type(value).__name__} module output")


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


def _app_of(port: torch.nn.Module):
    app = port.__dict__.get(APP_ATTR)
    if app is None:
        raise AutoportError(
            "nxdi: this module was not built by NxdiTarget.build_port (it has no NxDI application)"
        )
    return app


# state-dict key parts of NxDI runtime state rather than weights (KV cache manager, rank utilities)
RUNTIME_STATE_MARKERS = ("kv_mgr.", "rank_util.", "past_key_values")


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
                _nxdi(f"{NXDI}.models.config")
                _nxdi(f"{NXDI}.utils.hf_adapter")
            except Exception as exc:  # ImportError, but also driver and GLIBC errors raised on import
                self._import_error = f"{type(exc).__name__}: {exc}"
            self._import_checked = True
        if self._import_error:
            return f"neuronx-distributed-inference is not importable: {self._import_error}"
        if stage is None:
            return None
        try:
            from ..envcheck import check_environment
        except ImportError:  # pragma: no cover - envcheck ships with the harness
            return None
        return check_environment("nxdi").unavailable_reason("nxdi", stage)

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

        ``hf_config`` is not used: NxDI reads the same config.json through load_pretrained_config.
        CPU mode runs in one process, so TP is 1 unless this process was started by torchrun with
        WORLD_SIZE equal to the spec's tp_degree."""
        _enter_cpu_mode()
        _nxdi(f"{NXDI}.utils.hf_adapter")  # NxD's first import, in CPU mode, before the port's own
        app_cls = import_port_class(spec)
        tp = spec.port.tp_degree if os.environ.get("WORLD_SIZE") == str(spec.port.tp_degree) else 1
        config = _inference_config(app_cls, spec, dtype, tp_degree=tp, on_cpu=True)
        with _step(f"{app_cls.__name__}({str(spec.weights_dir)!r}, config)"):
            app = app_cls(str(spec.weights_dir), config)
        with _step(f"{app_cls.__name__}.to_cpu()"):
            app.to_cpu()
        model = app.context_encoding_model.model
        model.__dict__[APP_ATTR] = app
        return model.eval()

    def mapping_view(self, port: torch.nn.Module, hf_state: dict) -> tuple[dict, dict]:
        """NxDI hands the conversion HF keys without the ``model.`` prefix, and the port's state
        dict holds runtime state (KV cache, rank tensors) that no checkpoint fills."""
        stripped = {key.removeprefix("model."): value for key, value in hf_state.items()}
        wanted = {
            key: value
            for key, value in port.state_dict().items()
            if not any(part in key for part in RUNTIME_STATE_MARKERS)
        }
        return stripped, wanted

    def load_converted(self, port: torch.nn.Module, converted: dict) -> None:
        """Nothing to do: ``to_cpu()`` in build_port already loaded the checkpoint through NxDI."""

    @torch.inference_mode()
    def run_model(self, port: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
        """One context-encoding pass through NxDI; logits at every position.

        NxDI keeps only the last position's logits, so the normed hidden states of all positions are
        taken from ``norm`` and put through the port's own ``lm_head``."""
        app = _app_of(port)
        batch, length = input_ids.shape
        seen = []
        handle = port.norm.register_forward_hook(lambda module, args, out: seen.append(_first_tensor(out)))
        try:
            with _step("context-encoding forward (reset(), then forward from position 0)"):
                app.reset()
                app(
                    input_ids=input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    position_ids=torch.arange(length).expand(batch, length),
                    seq_ids=torch.arange(batch),
                )
        finally:
            handle.remove()
        if not seen:
            raise StageFailure(
                "nxdi: the port's norm never ran in the forward pass; cannot read per-position logits"
            )
        logits = _first_tensor(port.lm_head(seen[0][:batch, :length])).float()
        return logits[..., : getattr(port.config, "vocab_size", logits.shape[-1])]

    @torch.inference_mode()
    def run_component(self, module: torch.nn.Module, kind: str, inputs: dict) -> torch.Tensor:
        args = component_args(module, kind, inputs)
        if self.components_on_device:
            return self._component_on_device(module, args)
        with _step(f"{type(module).__name__} forward ({kind}) in CPU mode"):
            return _first_tensor(module(*args))

    def _component_on_device(self, module: torch.nn.Module, args: tuple) -> torch.Tensor:
        """Compile one component alone with NxDI's build_module; it is rebuilt as ``cls(config=...)``."""
        config = getattr(module, "config", None)
        name = type(module).__name__
        if config is None:
            raise StageFailure(f"nxdi: {name} keeps no .config, so build_module cannot rebuild it on device")
        testing = _nxdi(f"{NXDI}.utils.testing")
        _leave_cpu_mode()
        with tempfile.TemporaryDirectory(prefix="autoport-nxdi-component-") as tmp:
            checkpoint = Path(tmp) / "checkpoint.pt"
            torch.save(module.state_dict(), checkpoint)
            with _step(f"build_module({name})"):
                neuron_module = testing.build_module(
                    type(module),
                    [args],
                    module_init_kwargs={"config": config},
                    tp_degree=config.neuron_config.tp_degree,
                    compiler_workdir=str(Path(tmp) / COMPILER_WORKDIR),
                    checkpoint_path=str(checkpoint),
                )
            with _step(f"{name} on device"):
                return _first_tensor(neuron_module(*args))

    # -- compile, load, generate -----------------------------------------------------------------
    def compile(self, port: torch.nn.Module, spec: PortSpec, out_dir: Path) -> CompileResult:
        """``App(weights, config).compile(out_dir)`` from the checkpoint (the eager ``port`` is not reused)."""
        out_dir = Path(out_dir).resolve()
        _nxdi(f"{NXDI}.utils.hf_adapter")
        app_cls = import_port_class(spec)
        dtype = getattr(torch, spec.port.dtype)
        config = _inference_config(app_cls, spec, dtype, tp_degree=spec.port.tp_degree, on_cpu=False)
        problem = attn_cls_problem(config.neuron_config, app_cls)
        if problem:
            raise StageFailure(f"nxdi: {problem}")
        _leave_cpu_mode()
        flags = cc_flags(os.environ.get("NEURON_CC_FLAGS"))
        workdir = out_dir / COMPILER_WORKDIR
        start = time.perf_counter()
        with _environ(NEURON_CC_FLAGS=flags, BASE_COMPILE_WORK_DIR=str(workdir)):
            with _step(f"{app_cls.__name__}({str(spec.weights_dir)!r}, config)"):
                app = app_cls(str(spec.weights_dir), config)
            try:
                app.compile(str(out_dir))
            except Exception as exc:
                raise _compile_failure(f"{app_cls.__name__}.compile()", exc, out_dir, flags) from exc
        seconds = round(time.perf_counter() - start, 3)
        with _step(f"{type(config).__name__}.save({str(out_dir)!r})"):
            app.config.save(str(out_dir))  # beside model.pt: load() rebuilds the config from it
        attn_cls = _check_saved_config(out_dir)
        graphs = {f"context_encoding_{b}": COMPILED_FILE for b in spec.port.context_bucket_list}
        graphs.update({f"token_generation_{b}": COMPILED_FILE for b in spec.port.token_bucket_list})
        with _step(f"{app_cls.__name__}.get_compiler_args()"):
            port_args = app.get_compiler_args()
        return CompileResult(
            graphs=graphs,
            seconds_per_graph={"all_graphs": seconds},
            details={
                "compiler": "neuronx-cc (NxDI compile)",
                "neuron_cc_flags": flags,
                "port_compiler_args": port_args,
                "neuron_config": CONFIG_FILE,
                "attn_cls": attn_cls,
                "compiler_workdir": COMPILER_WORKDIR,
            },
        )

    def load_compiled(self, spec: PortSpec, out_dir: Path, result: CompileResult) -> NxdiCompiledModel:
        out_dir = Path(out_dir).resolve()
        _nxdi(f"{NXDI}.utils.hf_adapter")
        app_cls = import_port_class(spec)
        config_cls, _ = _config_classes(app_cls)
        with _step(f"{config_cls.__name__}.load({str(out_dir)!r})"):
            config = config_cls.load(str(out_dir))
        problem = attn_cls_problem(config.neuron_config, app_cls)
        if problem:
            raise StageFailure(f"nxdi: {out_dir / CONFIG_FILE}: {problem}")
        _leave_cpu_mode()
        with _step(f"{app_cls.__name__}({str(spec.weights_dir)!r}, config)"):
            app = app_cls(str(spec.weights_dir), config)
        with _step(f"{app_cls.__name__}.load({str(out_dir)!r})"):
            app.load(str(out_dir))
        return NxdiCompiledModel(app, spec)


def generate_kwargs(params: SamplingParams, pad_id: int) -> dict:
    """HuggingFace ``generate`` arguments for the harness's sampling settings."""
    kwargs = {"max_new_tokens": params.max_new_tokens, "do_sample": not params.greedy, "pad_token_id": pad_id}
    if params.eos_token_id is None:  # exactly that many tokens, as NxDI's accuracy check and the HF golden do
        kwargs["min_new_tokens"] = params.max_new_tokens
    else:
        kwargs["eos_token_id"] = params.eos_token_id
    if not params.greedy:
        kwargs.update(temperature=params.temperature, top_k=params.top_k, top_p=params.top_p)
    if params.suppress_token_ids:
        kwargs["suppress_tokens"] = list(params.suppress_token_ids)
    return kwargs


class NxdiCompiledModel:
    """A loaded NxDI application: generation through HuggingFaceGenerationAdapter, scoring by direct calls."""

    def __init__(self, app, spec: PortSpec, pad_id: int = 0):
        self.app = app
        self.spec = spec
        self.pad_id = pad_id
        self.calls: list[tuple[str, float]] = []  # (graph name, seconds) of each forward
        forward = app.forward
        token_buckets = spec.port.token_bucket_list

        def timed_forward(*args, **kwargs):
            positions = kwargs.get("position_ids")
            if positions is None or int(positions.min()) == 0:
                graph = "context_encoding"
            else:  # the smallest token-generation bucket that reaches the position
                graph = f"token_generation_{smallest_fitting(int(positions.max()) + 1, token_buckets)}"
            start = time.perf_counter()
            out = forward(*args, **kwargs)
            self.calls.append((graph, time.perf_counter() - start))
            return out

        app.forward = timed_forward  # the adapter takes app.forward when it is built, below
        hf_adapter = _nxdi(f"{NXDI}.utils.hf_adapter")
        with _step("HuggingFaceGenerationAdapter(app)"):
            self.adapter = hf_adapter.HuggingFaceGenerationAdapter(app)

    def _context_bucket(self, length: int) -> int:
        buckets = self.spec.port.context_bucket_list
        bucket = smallest_fitting(length, buckets)
        if bucket is None:
            raise StageFailure(
                f"a sequence of {length} tokens does not fit the largest context bucket ({buckets[-1]}); "
                "raise port.context_buckets in the spec or shorten the prompts"
            )
        return bucket

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], params: SamplingParams) -> GenerationResult:
        p = self.spec.port
        new = params.max_new_tokens
        kwargs = generate_kwargs(params, self.pad_id)
        tokens: list[list[int]] = []
        used: set[str] = set()
        ttft = decode_s = 0.0
        steps = 0
        start = time.perf_counter()
        for first in range(0, len(prompts), p.batch_size):
            group = prompts[first : first + p.batch_size]
            rows = group + [group[0]] * (p.batch_size - len(group))  # fill the static batch
            longest = max(len(r) for r in rows)
            if longest + new > p.max_seq_len:
                raise StageFailure(
                    f"prompt ({longest} tokens) + {new} new tokens exceeds port.max_seq_len ({p.max_seq_len})"
                )
            used.add(f"context_encoding_{self._context_bucket(longest)}")
            input_ids = torch.full((p.batch_size, longest), self.pad_id, dtype=torch.long)
            mask = torch.zeros_like(input_ids)
            for i, row in enumerate(rows):  # right padding, NxDI's default padding_side
                input_ids[i, : len(row)] = torch.tensor(row)
                mask[i, : len(row)] = 1
            if not params.greedy:
                torch.manual_seed(params.seed)
            self.calls.clear()
            with _step(f"HuggingFaceGenerationAdapter.generate(do_sample={not params.greedy})"):
                out = self.adapter.generate(input_ids, attention_mask=mask, **kwargs)
            sequences = getattr(out, "sequences", out)
            rows_out = [
                _cut_at(sequences[i, longest:].tolist(), params.eos_token_id) for i in range(len(group))
            ]
            decode = [(g, s) for g, s in self.calls if g != "context_encoding"]
            if max(len(r) for r in rows_out) > 1 and not decode:
                raise StageFailure(
                    "nxdi: generation never ran a token-generation graph (every forward started at position 0); "
                    "the KV cache was not exercised"
                )
            context = [s for g, s in self.calls if g == "context_encoding"]
            if first == 0 and context:
                ttft = context[0]
            used.update(g for g, _ in decode)
            decode_s += sum(s for _, s in decode)
            steps += len(decode)
            tokens.extend(rows_out)
        return GenerationResult(
            tokens=tokens,
            ttft_s=ttft,
            decode_s=decode_s,
            decode_steps=steps,
            total_s=time.perf_counter() - start,
            buckets_used=sorted(used),
        )

    @torch.inference_mode()
    def score(self, sequences: list[list[int]]) -> list[torch.Tensor]:
        """Teacher forcing through NxDI's graphs: logits [len, vocab] of each whole sequence.

        NxDI's context encoding returns the last position's logits only, so each sequence runs as one
        context-encoding step on its first token, then one token-generation step per following token
        (fed the sequence's own token): every position is judged on the true context, through the KV cache."""
        batch = self.spec.port.batch_size
        out = []
        for seq in sequences:
            if len(seq) > self.spec.port.max_seq_len:
                raise StageFailure(
                    f"a scored sequence of {len(seq)} tokens exceeds port.max_seq_len ({self.spec.port.max_seq_len})"
                )
            ids = torch.tensor([seq] * batch)  # every row of the static batch holds the sequence
            logits = []
            with _step("teacher-forced scoring (context encoding, then token generation)"):
                self.app.reset()
                for t in range(len(seq)):
                    result = self.app.forward(
                        input_ids=ids[:, t : t + 1],
                        attention_mask=torch.ones(batch, t + 1, dtype=torch.long),
                        position_ids=torch.full((batch, 1), t),
                        seq_ids=torch.arange(batch),
                    )
                    logits.append(result.logits[0, -1].float())
            out.append(torch.stack(logits))
        return out

    def decode_teacher_forced(self, prompts: list[list[int]], continuations: list[list[int]]):
        """Every decode step's logits, each continuation fed one token at a time: :meth:`score` already
        runs every position after the first through the token-generation graphs."""
        from ..decode_forcing import DecodeLogits

        scored = self.score([p + c for p, c in zip(prompts, continuations)])
        buckets = self.spec.port.token_bucket_list
        out = DecodeLogits([], [], [])
        for prompt, cont, logits in zip(prompts, continuations, scored):
            positions = list(range(len(prompt) - 1, len(prompt) - 1 + len(cont)))
            out.logits.append(logits[positions[0] : positions[0] + len(cont)] if cont else logits[:0])
            out.positions.append(positions)
            out.graphs.append(
                [
                    f"token_generation_{smallest_fitting(t + 1, buckets)}" if t else "context_encoding"
                    for t in positions
                ]
            )
        return out


def _cut_at(tokens: list[int], eos: int | None) -> list[int]:
    if eos is not None and eos in tokens:
        return tokens[: tokens.index(eos) + 1]
    return tokens
