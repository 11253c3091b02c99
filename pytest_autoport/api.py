"""The Autoport compiler and inference APIs, as thin layers over the stage engine.

``CompilationConfig`` + ``compile_model`` compile through the same session and artifact store as the
``compile`` stage; ``run_inference_with_classes`` generates through the same compiled model as the
``generate`` stage. Each call writes a spec equivalent to its arguments (beside the artifacts), so what
the API compiles is what ``autoport verdict`` would judge.

Targets: ``torch`` runs the port classes of a spec anywhere; ``nxdi`` needs NxD Inference (without
it, both calls return a failure naming the import error). ``cpu_mode=True`` compiles nothing: the
port runs eagerly (torch) or as NxDI's CPU-mode application (nxdi, the way to use NxDI classes where
there are no NeuronCores); ``compile_model`` then builds it and runs one forward pass as the check.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import AutoportError
from .session import AutoportSession, Options

NEURON_CONFIG = "neuron_config.json"


@dataclass
class CompilationConfig:
    """What to compile. Classes may be given as class objects or as ``"path/file.py:Class"``."""

    model_class: object
    config_class: object = None  # recorded in neuron_config.json
    neuron_config_class: object = None  # recorded in neuron_config.json
    model_path: str = "agent_artifacts/data"
    output_path: str = "agent_artifacts/data/compiled_model"
    batch_size: int = 1
    seq_len: int = 128
    tp_degree: int = 1
    ep_degree: int = 1  # expert parallelism (MoE): nxdi device graphs; the torch target runs all experts
    use_fp16: bool = True  # bfloat16 weights and graphs; False: float32
    num_layers: int | None = None  # keep the first N decoder layers (--autoport-layers; faster compiles)
    cpu_mode: bool = False  # no compilation: the eager port (torch) or NxDI's CPU-mode application
    target: str = "torch"
    hf_model_class: str | None = None  # default: architectures[0] of <model_path>/config.json


def class_ref(cls) -> str:
    """``"file.py:Class"`` for a class object (or the string as given)."""
    if cls is None or isinstance(cls, str):
        return cls or ""
    import inspect

    return f"{inspect.getsourcefile(cls)}:{cls.__qualname__}"


def _spec_name(model_class: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "-", model_class.rpartition(":")[2]).lower() or "model"


class _ApiSession(AutoportSession):
    """The stage engine's session with the compiled artifacts under the caller's output path."""

    def __init__(self, spec, options, output: Path):
        super().__init__(spec, options)
        self._output = output

    @property
    def compiled_root(self) -> Path:
        return self._output / "graphs"

    @property
    def failures_root(self) -> Path:
        return self._output / "compilation_failures"


def _session(config: CompilationConfig, spec_path: Path) -> _ApiSession:
    from .validate_command import spec_from_validation_config, write_spec

    base = Path.cwd()
    output = Path(config.output_path).expanduser().resolve()
    data = {
        "model_name": _spec_name(class_ref(config.model_class)),
        "model_class": class_ref(config.model_class),
        "model_path": str(config.model_path),
        "tp_degree": config.tp_degree,
        "ep_degree": config.ep_degree,
        "test_parameters": [{"batch_size": config.batch_size, "seq_len": config.seq_len}],
        "dtype": "bfloat16" if config.use_fp16 else "float32",
        "target": config.target,
    }
    if config.hf_model_class:
        data["hf_model_class"] = config.hf_model_class
    text = spec_from_validation_config(data, spec_path, base, components=[])
    spec = write_spec(text, spec_path, base)
    from .spec import import_port_class

    import_port_class(spec)
    options = Options(artifacts_dir=output.parent, target=config.target)
    session = _ApiSession(spec, options, output)
    if config.num_layers and config.num_layers < session.full_layers:  # the verdict's --autoport-layers
        session = _ApiSession(spec, dataclasses.replace(options, layers=config.num_layers), output)
    return session


def compile_model(config: CompilationConfig) -> bool:
    """Compile every bucket into ``config.output_path`` and save ``neuron_config.json`` there.
    On failure: False, with the message and the folder holding the logs and graphs printed."""
    output = Path(config.output_path).expanduser().resolve()
    output.mkdir(parents=True, exist_ok=True)
    try:
        session = _session(config, output / "autoport_spec.toml")
        built = _check_cpu_mode(session) if config.cpu_mode else _compile(session, config.target)
    except Exception as exc:  # the caller gets False and a message, as the Autoport tool does
        _report_failure(output, exc)
        return False
    record = {
        **{k: (class_ref(v) if k.endswith("_class") else v) for k, v in asdict(config).items()},
        "output_path": str(output),
        "spec": str(session.spec.path),
        "dtype": session.spec.port.dtype,
        "layers": session.layers_record,  # {"judged": N, "total": M} with num_layers, else None
        **built,
    }
    from .results import write_atomic

    write_atomic(output / NEURON_CONFIG, json.dumps(record, indent=2, default=str) + "\n")
    if config.cpu_mode:
        print(
            f"CPU mode: {session.spec.name} built and ran one forward pass (nothing compiled)",
            file=sys.stderr,
        )
    else:
        print(f"compiled {len(built['graphs'])} graphs: {built['artifact']}", file=sys.stderr)
    return True


def _compile(session, target: str) -> dict:
    reason = session.target.unavailable_reason("compile")
    if reason:
        hint = "; cpu_mode=True runs NxDI's CPU-mode application instead" if target == "nxdi" else ""
        raise AutoportError(f"target {target!r} cannot compile here: {reason}{hint}")
    from .progress import progress

    with progress(total=1, desc=f"compile {session.spec.name}") as bar:
        entry, result = session.compiled
        bar.update(1)
    return {"artifact": str(entry.path), "key": entry.key, "graphs": sorted(result.graphs)}


def _check_cpu_mode(session) -> dict:
    """Build the port as CPU mode runs it and push one token through the model: the check that
    stands in for a compile when nothing is compiled."""
    import torch

    reason = session.target.unavailable_reason("model")
    if reason:
        raise AutoportError(f"target {session.target.name!r} cannot run in CPU mode here: {reason}")
    logits = session.target.run_model(
        session.port_in(session.dtype), torch.zeros(session.spec.port.batch_size, 1, dtype=torch.long)
    )
    if not torch.isfinite(logits).all():
        raise AutoportError("CPU mode: the port's logits for one token are not finite")
    return {"artifact": None, "key": None, "graphs": [], "path": "cpu"}


def _report_failure(output: Path, exc: Exception) -> None:
    from .artifacts import CompileFailed
    from .results import write_atomic

    log = output / "compile_error.log"
    write_atomic(log, "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    kept = getattr(exc, "failure_dir", None) if isinstance(exc, CompileFailed) else None
    where = f"; logs and intermediate graphs kept in {kept}" if kept else ""
    print(f"compile failed: {exc}{where}; traceback in {log}", file=sys.stderr)


def run_inference_with_classes(
    model_class,
    config_class=None,
    model_path: str = "agent_artifacts/data",
    compiled_path: str = "agent_artifacts/data/compiled_model",
    prompt: str = "The future of artificial intelligence is",
    max_new_tokens: int = 50,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    suppress_special_tokens: bool = True,
    neuron_config_class=None,
    cpu_mode: bool = False,
) -> tuple[bool, str, dict]:
    """Generate from ``prompt`` with the model compiled into ``compiled_path``; the settings are read
    back from its ``neuron_config.json``. ``cpu_mode`` (or a CPU-mode ``compile_model``) generates
    through the eager port or NxDI's CPU application instead of compiled graphs. Returns ``(success, response, metrics)``; metrics hold
    tokens/s, time to first token and latency (an ``error`` key when success is False)."""
    compiled = Path(compiled_path).expanduser().resolve()
    try:
        saved = json.loads((compiled / NEURON_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        message = f"{compiled / NEURON_CONFIG}: cannot read ({exc}); run compile_model first"
        return False, "", {"error": message}
    fields = {k: v for k, v in saved.items() if k in CompilationConfig.__dataclass_fields__}
    config = CompilationConfig(
        **{**fields, "model_class": model_class, "model_path": model_path, "output_path": str(compiled)}
    )
    config.cpu_mode = config.cpu_mode or cpu_mode
    try:
        session = _session(config, compiled / "autoport_spec.toml")
        model = (
            session.target.cpu_compiled_model(session.spec, session.port_in(session.dtype))
            if config.cpu_mode
            else session.compiled_model
        )
        path = "cpu" if config.cpu_mode else "compiled"
        settings = (prompt, max_new_tokens, temperature, top_k, top_p, seed, suppress_special_tokens)
        return _generate(session, model, path, *settings)
    except Exception as exc:
        return False, "", {"error": f"{type(exc).__name__}: {exc}"}


def _generate(
    session, model, path, prompt, max_new_tokens, temperature, top_k, top_p, seed, suppress
) -> tuple[bool, str, dict]:
    from .generation import SamplingParams

    tokenizer = session.tokenizer
    ids = tokenizer(prompt)["input_ids"]
    room = session.spec.port.max_seq_len - len(ids)
    if room < 1:
        raise AutoportError(
            f"the prompt ({len(ids)} tokens) leaves no room in seq_len {session.spec.port.max_seq_len}"
        )
    special = tuple(sorted(set(tokenizer.all_special_ids) - {tokenizer.eos_token_id}))
    params = SamplingParams(
        max_new_tokens=min(max_new_tokens, room),
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        eos_token_id=tokenizer.eos_token_id,
        suppress_token_ids=special if suppress else (),
    )
    result = model.generate([ids], params)
    tokens = result.tokens[0]
    response = tokenizer.decode(tokens, skip_special_tokens=True)
    metrics = {
        "prompt_tokens": len(ids),
        "new_tokens": len(tokens),
        "max_new_tokens": params.max_new_tokens,
        "ttft_s": round(result.ttft_s, 5),
        "latency_s": round(result.total_s, 5),
        "tokens_per_s": round(len(tokens) / result.total_s, 2) if result.total_s else 0.0,
        "decode_tokens_per_s": round(result.decode_steps / result.decode_s, 2) if result.decode_s else 0.0,
        "buckets_used": list(result.buckets_used),
        "sampling": result.sampling,
        "path": path,
    }
    return bool(tokens), response, metrics
