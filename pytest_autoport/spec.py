"""The port spec: one TOML file per model in ``port_specs/``, the single source of truth for a port.

Every table maps onto a frozen dataclass below. Parsing checks names and types against the
dataclass fields, so an unknown key, a wrong type or a missing field is reported with the file and
the dotted field name, never with a traceback.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path

from .errors import SpecError
from .output_forms import FORMS
from .spec_checks import check_source_files, check_text

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

TARGETS = ("torch", "nxdi")
DTYPES = ("float32", "bfloat16", "float16")
COMPILERS = ("export", "aoti")
CALL_KINDS = (
    "input_ids",
    "hidden_positions",
    "hidden",
    "hf_args",
    "hidden_encoder",
    "hidden_positions_encoder",
)
ARCHITECTURES = ("decoder", "encoder_decoder")


@dataclass(frozen=True)
class ModelParams:
    """The porting parameters the Autoport documents ask for, plus the spec's short name."""

    name: str
    hf_model_class: str
    model_id: str
    weights_path: str
    modeling_file: str = ""
    config_file: str = ""
    model_source_dir: str = ""
    venv_path: str = ""


@dataclass(frozen=True)
class PortParams:
    model_class: str
    target: str = "torch"
    dtype: str = "float32"
    batch_size: int = 1
    max_seq_len: int = 64
    context_buckets: list[int] = field(default_factory=list)  # empty: powers of two up to max_seq_len
    token_generation_buckets: list[int] = field(default_factory=list)  # empty: powers of two
    tp_degree: int = 1
    ep_degree: int = 1  # expert parallelism (MoE): nxdi device graphs split the experts
    compiler: str = "export"  # torch target: "export" or "aoti"
    architecture: str = "decoder"  # "decoder" (causal LM) or "encoder_decoder" (seq2seq LM)

    @property
    def is_encoder_decoder(self) -> bool:
        return self.architecture == "encoder_decoder"

    @property
    def context_bucket_list(self) -> list[int]:
        from .buckets import powers_of_two

        return self.context_buckets or powers_of_two(self.max_seq_len)

    @property
    def token_bucket_list(self) -> list[int]:
        from .buckets import powers_of_two

        return self.token_generation_buckets or powers_of_two(self.max_seq_len)


@dataclass(frozen=True)
class ValidationParams:
    prompts: list[str]
    num_tokens_to_check: int = 16
    token_match_threshold: float = 0.95


@dataclass(frozen=True)
class GenerationParams:
    """The ``generate`` stage: how to sample, when output counts as degenerate, optional speed gates."""

    max_new_tokens: int = 0  # 0: validation.num_tokens_to_check
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    stop_at_eos: bool = True
    suppress_special_tokens: bool = False
    max_token_run: int = 8  # one token repeated back to back more often than this: degenerate
    max_ngram_repeats: int = 4  # an n-gram (n = 2..4) repeated back to back more often than this
    max_ttft_s: float = 0.0  # 0: no gate
    min_tokens_per_s: float = 0.0  # 0: no gate


@dataclass(frozen=True)
class Component:
    """One component check: the HF submodule and the port submodule that must agree."""

    name: str
    hf_module: str
    port_module: str = ""
    layers: list[int | str] = field(default_factory=lambda: ["first", "last"])
    call: str = ""  # how the port module is called; empty: derived from the name (see call_kind)
    r_band: list[float] = field(default_factory=list)  # low-precision band override [low, high] ...
    r_band_reason: str = ""  # ... allowed only with a written reason, shown in the report
    # the same HF module under other transformers versions, tried in order where hf_module is absent
    hf_module_aliases: list[str] = field(default_factory=list)
    # forms HF's output takes in some transformers versions, derived from the port's (output_forms.py)
    hf_output_forms: list[str] = field(default_factory=list)

    @property
    def call_kind(self) -> str:
        """``input_ids``: module(input_ids); ``hidden_positions``: module(hidden, position_ids);
        ``hidden``: module(hidden); encoder-decoder only: ``hidden_encoder``: module(hidden,
        encoder_hidden) (cross-attention); ``hidden_positions_encoder``: module(hidden, position_ids,
        encoder_hidden) (decoder layer)."""
        if self.call:
            return self.call
        if self.name in ("embedding", "embed_tokens"):
            return "input_ids"
        if "norm" in self.name:
            return "hidden"
        if "attention" in self.name or self.name in ("self_attn", "decoder_layer", "layer"):
            return "hidden_positions"
        return "hidden"

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.hf_module

    def resolved_layers(self, num_layers: int) -> list[int]:
        if not self.per_layer:
            return []
        chosen: list[int] = []
        for entry in self.layers:
            if entry == "all":
                chosen.extend(range(num_layers))
                continue
            index = {"first": 0, "last": num_layers - 1}.get(entry, entry)
            if isinstance(index, int) and index < 0:
                index += num_layers
            if index not in chosen:
                chosen.append(index)
        return chosen

    def hf_path(self, layer: int | None) -> str:
        return self.hf_module.format(i=layer)

    def port_path(self, layer: int | None) -> str:
        return (self.port_module or self.hf_module).format(i=layer)


@dataclass(frozen=True)
class PortSpec:
    path: Path
    project_root: Path
    model: ModelParams
    port: PortParams
    validation: ValidationParams
    components: list[Component]
    generation: GenerationParams = field(default_factory=GenerationParams)
    timeouts: dict = field(default_factory=dict)  # stage name -> seconds
    tiny: dict = field(default_factory=dict)
    hygiene: dict = field(default_factory=dict)  # waived porting rule -> the written reason

    @property
    def name(self) -> str:
        return self.model.name

    def resolve(self, relative: str) -> Path:
        candidate = Path(relative).expanduser()
        return candidate if candidate.is_absolute() else self.project_root / candidate

    @property
    def weights_dir(self) -> Path:
        return self.resolve(self.model.weights_path)

    @property
    def port_class_file(self) -> Path:
        return self.resolve(self.port.model_class.split(":", 1)[0])

    def with_overrides(self, **port_overrides) -> PortSpec:
        changes = {k: v for k, v in port_overrides.items() if v is not None}
        if not changes:
            return self
        return dataclasses.replace(self, port=dataclasses.replace(self.port, **changes))


_TABLES = {"model": ModelParams, "port": PortParams, "validation": ValidationParams}
_OPTIONAL_TABLES = {"generation": GenerationParams}
STAGE_NAMES = (
    "env",
    "preflight",
    "hygiene",
    "weights",
    "component",
    "model",
    "compile",
    "generate",
    "golden",
)


def find_spec_file(name_or_path: str, project_root: Path) -> Path:
    """``llama`` -> ``<root>/port_specs/llama.toml``; a path is taken as it is."""
    candidate = Path(name_or_path).expanduser()
    if candidate.suffix == ".toml" or candidate.parent != Path("."):
        path = candidate if candidate.is_absolute() else project_root / candidate
    else:
        path = project_root / "port_specs" / f"{name_or_path}.toml"
    folder = candidate if candidate.is_absolute() else project_root / candidate
    if not path.is_file() and folder.is_dir():
        specs = sorted(p.name for p in folder.glob("*.toml"))
        listed = f"; specs in it: {', '.join(specs)}" if specs else ""
        raise SpecError(folder, None, f"is a folder, not a spec file: name one spec file{listed}")
    if not path.is_file():
        available = sorted(p.stem for p in (project_root / "port_specs").glob("*.toml"))
        hint = f" (specs in port_specs/: {', '.join(available)})" if available else ""
        raise SpecError(path, None, f"no such spec file{hint}")
    return path


def load_spec(path: Path, project_root: Path, *, check_imports: bool = True) -> PortSpec:
    path, project_root = Path(path), Path(project_root)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(path, None, f"invalid TOML: {exc}") from None
    except OSError as exc:
        raise SpecError(path, None, f"cannot read: {exc.strerror}") from None

    known = set(_TABLES) | set(_OPTIONAL_TABLES) | {"components", "tiny", "timeouts", "hygiene"}
    for key in raw:
        if key not in known:
            raise SpecError(path, key, f"unknown table; expected one of {sorted(known)}")
    tables = {}
    for key, cls in _TABLES.items():
        if key not in raw:
            raise SpecError(path, key, "missing table")
        tables[key] = _build(cls, raw[key], path, key)

    raw_components = raw.get("components", [])
    if not isinstance(raw_components, list):
        raise SpecError(path, "components", "must be an array of tables ([[components]])")
    components = [
        _build(Component, entry, path, f"components[{n}]") for n, entry in enumerate(raw_components)
    ]
    for key, cls in _OPTIONAL_TABLES.items():
        tables[key] = _build(cls, raw.get(key, {}), path, key)
    timeouts = raw.get("timeouts", {})
    if not isinstance(timeouts, dict):
        raise SpecError(path, "timeouts", "must be a table of stage = seconds")
    for stage, seconds in timeouts.items():
        if stage not in STAGE_NAMES:
            raise SpecError(path, f"timeouts.{stage}", f"unknown stage; expected one of {STAGE_NAMES}")
        if not _matches(seconds, float) or seconds <= 0:
            raise SpecError(
                path, f"timeouts.{stage}", f"expected a positive number of seconds, got {seconds!r}"
            )
    tiny = raw.get("tiny", {})
    if not isinstance(tiny, dict):
        raise SpecError(path, "tiny", "must be a table of config overrides")

    hygiene = _hygiene_waivers(raw.get("hygiene", {}), path)
    spec = PortSpec(
        path=path,
        project_root=project_root,
        components=components,
        timeouts=timeouts,
        tiny=tiny,
        hygiene=hygiene,
        **tables,
    )
    _check_semantics(spec)
    if check_imports:
        import_port_class(spec)
    return spec


def _hygiene_waivers(waivers, path: Path) -> dict:
    from .hygiene import RULES

    if not isinstance(waivers, dict):
        raise SpecError(path, "hygiene", 'must be a table of rule = "reason"')
    for rule, reason in waivers.items():
        if rule not in RULES:
            raise SpecError(path, f"hygiene.{rule}", f"unknown rule; expected one of {RULES}")
        if not isinstance(reason, str) or not reason.strip():
            raise SpecError(path, f"hygiene.{rule}", "a waived rule needs a written reason")
    return waivers


def _build(cls, values, path: Path, where: str):
    if not isinstance(values, dict):
        raise SpecError(path, where, "must be a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in values:
        if key not in fields:
            raise SpecError(path, f"{where}.{key}", f"unknown key; expected one of {sorted(fields)}")
    for name, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and name not in values:
            raise SpecError(path, f"{where}.{name}", "missing required field")
        if name in values and not _matches(values[name], hints[name]):
            raise SpecError(
                path,
                f"{where}.{name}",
                f"expected {_describe(hints[name])}, got {type(values[name]).__name__} {values[name]!r}",
            )
    return cls(**values)


def _matches(value, hint) -> bool:
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _describe(hint) -> str:
    origin = typing.get_origin(hint)
    if origin is list:
        return f"a list of {_describe(typing.get_args(hint)[0])}"
    if typing.get_args(hint):
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(
        hint, getattr(hint, "__name__", str(hint))
    )


def _check_weights_path(spec: PortSpec) -> None:
    """A weights folder must be a folder of its own: never empty, the project, the home folder or above."""
    raw = spec.model.weights_path
    if not str(raw).strip():
        raise SpecError(spec.path, "model.weights_path", "is empty: name the checkpoint's own folder")
    folder = spec.weights_dir.resolve()
    home = Path("~").expanduser()  # stays "~" (never holds anything) when there is no home folder
    for what, holds in (("the project root", spec.project_root.resolve()), ("the home folder", home)):
        if holds.is_absolute() and holds.resolve().is_relative_to(folder):
            raise SpecError(
                spec.path,
                "model.weights_path",
                f"{raw!r} is {folder}, which is or holds {what}; name the checkpoint's own folder",
            )


def _check_semantics(spec: PortSpec) -> None:
    p, path = spec.port, spec.path
    check_text(spec)
    _check_weights_path(spec)
    check_source_files(spec)
    if p.target not in TARGETS:
        raise SpecError(path, "port.target", f"unknown target {p.target!r}; expected one of {TARGETS}")
    if p.dtype not in DTYPES:
        raise SpecError(path, "port.dtype", f"unknown dtype {p.dtype!r}; expected one of {DTYPES}")
    if ":" not in p.model_class:
        raise SpecError(path, "port.model_class", "expected 'path/to/file.py:ClassName'")
    for name in ("batch_size", "max_seq_len", "tp_degree", "ep_degree"):
        if getattr(p, name) < 1:
            raise SpecError(path, f"port.{name}", "must be at least 1")
    if p.architecture not in ARCHITECTURES:
        raise SpecError(
            path,
            "port.architecture",
            f"unknown architecture {p.architecture!r}; expected one of {ARCHITECTURES}",
        )
    if p.is_encoder_decoder and (p.target != "torch" or p.compiler != "export"):
        raise SpecError(
            path,
            "port.architecture",
            'encoder_decoder ports run on target "torch" with compiler "export" only',
        )
    if p.compiler not in COMPILERS:
        raise SpecError(
            path, "port.compiler", f"unknown compiler {p.compiler!r}; expected one of {COMPILERS}"
        )
    for name in ("context_buckets", "token_generation_buckets"):
        buckets = getattr(p, name)
        if not buckets:
            continue
        if sorted(set(buckets)) != buckets:
            raise SpecError(path, f"port.{name}", "must be a strictly increasing list")
        if buckets[0] < 1 or buckets[-1] > p.max_seq_len:
            raise SpecError(path, f"port.{name}", f"buckets must lie in 1..max_seq_len ({p.max_seq_len})")
    if p.token_generation_buckets and p.token_generation_buckets[-1] != p.max_seq_len:
        raise SpecError(
            path, "port.token_generation_buckets", f"the last bucket must be max_seq_len ({p.max_seq_len})"
        )
    g = spec.generation
    if g.temperature < 0 or not 0 < g.top_p <= 1 or g.top_k < 0:
        raise SpecError(path, "generation", "needs temperature >= 0, 0 < top_p <= 1 and top_k >= 0")
    v = spec.validation
    if not v.prompts:
        raise SpecError(path, "validation.prompts", "needs at least one prompt")
    if v.num_tokens_to_check < 1:
        raise SpecError(path, "validation.num_tokens_to_check", "must be at least 1")
    if not 0.0 < v.token_match_threshold <= 1.0:
        raise SpecError(path, "validation.token_match_threshold", "must lie in (0, 1]")
    seen = set()
    for n, comp in enumerate(spec.components):
        if comp.name in seen:
            raise SpecError(path, f"components[{n}].name", f"duplicate component {comp.name!r}")
        seen.add(comp.name)
        if comp.call and comp.call not in CALL_KINDS:
            raise SpecError(path, f"components[{n}].call", f"{comp.call!r} is not one of {CALL_KINDS}")
        if comp.call in ("hidden_encoder", "hidden_positions_encoder") and not p.is_encoder_decoder:
            raise SpecError(
                path, f"components[{n}].call", f'{comp.call!r} needs port.architecture = "encoder_decoder"'
            )
        if comp.r_band and (len(comp.r_band) != 2 or not 0 < comp.r_band[0] < comp.r_band[1]):
            raise SpecError(path, f"components[{n}].r_band", "expected [low, high] with 0 < low < high")
        if comp.r_band and not comp.r_band_reason.strip():
            raise SpecError(
                path, f"components[{n}].r_band_reason", "overriding r_band needs a written reason"
            )
        for alias in comp.hf_module_aliases:
            if ("{i}" in alias) != comp.per_layer:
                raise SpecError(
                    path, f"components[{n}].hf_module_aliases", f"{alias!r} and hf_module disagree on '{{i}}'"
                )
        for form in comp.hf_output_forms:
            if form not in FORMS:
                raise SpecError(path, f"components[{n}].hf_output_forms", f"{form!r} is not one of {FORMS}")
        for entry in comp.layers:
            if isinstance(entry, str) and entry not in ("first", "last", "all"):
                raise SpecError(
                    path, f"components[{n}].layers", f"{entry!r} is not an index, 'first', 'last' or 'all'"
                )


def import_port_class(spec: PortSpec):
    """Import the class named by ``port.model_class`` (``file.py:Class``) from its file."""
    file_part, _, class_name = spec.port.model_class.partition(":")
    return import_from_file(spec.resolve(file_part), class_name, spec.path, "port.model_class")


def import_from_file(file: Path, attr: str, spec_path: Path, field_name: str):
    if not file.is_file():
        raise SpecError(spec_path, field_name, f"file not found: {file}")
    module_name = _module_name_for(file)
    module = sys.modules.get(module_name)
    if module is None or getattr(module, "__file__", None) != str(file):
        _ensure_packages_importable(file)
        spec_obj = importlib.util.spec_from_file_location(module_name, file)
        module = importlib.util.module_from_spec(spec_obj)
        sys.modules[module_name] = module
        try:
            spec_obj.loader.exec_module(module)
        except Exception as exc:  # the port's own import error, shown in one line
            del sys.modules[module_name]
            raise SpecError(
                spec_path, field_name, f"importing {file} failed: {type(exc).__name__}: {exc}"
            ) from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise SpecError(spec_path, field_name, f"{file} defines no {attr!r}") from None


def _module_name_for(file: Path) -> str:
    """Dotted name from the outermost folder that is a package (has __init__.py)."""
    parts = [file.stem]
    folder = file.parent
    while (folder / "__init__.py").is_file():
        parts.insert(0, folder.name)
        folder = folder.parent
    return ".".join(parts)


def _ensure_packages_importable(file: Path) -> None:
    """Put the port's package root first on sys.path, and forget a same-named package imported from
    another folder (another checkout), so the port's own shared modules are the ones imported."""
    folder = file.parent
    while (folder / "__init__.py").is_file():
        folder = folder.parent
    if str(folder) in sys.path:
        sys.path.remove(str(folder))
    sys.path.insert(0, str(folder))
    top = _module_name_for(file).split(".")[0]
    loaded = sys.modules.get(top)
    if loaded is not None and not str(getattr(loaded, "__file__", "") or "").startswith(str(folder)):
        for name in [name for name in sys.modules if name == top or name.startswith(top + ".")]:
            del sys.modules[name]
