"""The port spec: one TOML file per model in ``port_specs/``, the single source of truth for a port.

Every table maps onto a frozen dataclass below. Parsing checks names and types against the
dataclass fields, so an unknown key, a wrong type or a missing field is reported with the file and
the dotted field name, never with a traceback.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .errors import SpecError
from .output_forms import FORMS
from .port_import import import_from_file
from .spec_checks import check_source_files, check_text, check_weights_path
from .toml_fields import build_table, matches

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
        tables[key] = build_table(cls, raw[key], path, key)

    raw_components = raw.get("components", [])
    if not isinstance(raw_components, list):
        raise SpecError(path, "components", "must be an array of tables ([[components]])")
    components = [
        build_table(Component, entry, path, f"components[{n}]") for n, entry in enumerate(raw_components)
    ]
    for key, cls in _OPTIONAL_TABLES.items():
        tables[key] = build_table(cls, raw.get(key, {}), path, key)
    timeouts = raw.get("timeouts", {})
    if not isinstance(timeouts, dict):
        raise SpecError(path, "timeouts", "must be a table of stage = seconds")
    for stage, seconds in timeouts.items():
        if stage not in STAGE_NAMES:
            raise SpecError(path, f"timeouts.{stage}", f"unknown stage; expected one of {STAGE_NAMES}")
        if not matches(seconds, float) or seconds <= 0:
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


def _check_semantics(spec: PortSpec) -> None:
    p, path = spec.port, spec.path
    check_text(spec)
    check_weights_path(spec)
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
