"""``autoport validate`` and ``autoport spec-from-validation-config``: the Autoport validation tool's
interface over the staged verdict.

The validation JSON is converted into a spec (one converter for both commands) and the verdict runs on
that spec through pytest, as ``autoport verdict`` does. Smoke (the model loads) is the weights, component
and model stages; accuracy is the FP32 golden stage in the chosen mode; performance is the generate
stage's TTFT / throughput gates, set only when the JSON gives thresholds.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .errors import SpecError

MODES = ("token", "logit", "all")
# Prompts used when the JSON gives none (the bundled Llama spec's): short, plain English.
DEFAULT_PROMPTS = [
    "The lighthouse keeper climbed the spiral stairs",
    "To bake a loaf of bread, mix flour, water,",
    "The days of the week are Monday, Tuesday,",
]
ASSUMED = """\
fields the Autoport JSON does not carry, and what is assumed:
  prompts                 the bundled Llama spec's three prompts (optional key "prompts")
  hf_model_class          architectures[0] of <model_path>/config.json (optional key "hf_model_class")
  target, dtype           "torch", "float32" (optional keys "target", "dtype")
  token_match_threshold   0.95 (optional key); num_tokens_to_check defaults to 16
  components              none: the verdict warns that no module is localised (optional key
                          "components", a list of spec [[components]] tables, or --spec SPEC)
  test_parameters[]       batch_size, seq_len (= port.max_seq_len); optional max_ttft_s and
                          min_tokens_per_s turn on the performance gates
  config_class            checked for the file.py:Class form, recorded only
  compiled_model_path     recorded only: compiled graphs live in agent_artifacts/data/compiled_model,
                          keyed by everything that changes them
Relative paths are taken from the current folder (the project root)."""

_PLAIN = re.compile(r"[^A-Za-z0-9_.+-]+")


class ConfigError(SpecError):
    """A bad validation JSON: names the file and the field."""


# -- the converter ----------------------------------------------------------------------------------
def load_validation_config(path: Path) -> dict:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(path, None, f"cannot read: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(path, None, f"invalid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(path, None, "must be a JSON object")
    return data


def _field(data: dict, source: Path, name: str, kind, default=None, required: bool = False):
    if name not in data:
        if required:
            raise ConfigError(source, name, "missing required field")
        return default
    value = data[name]
    ok = isinstance(value, kind) and not (isinstance(value, bool) and kind is not bool)
    if not ok:
        raise ConfigError(source, name, f"expected {getattr(kind, '__name__', kind)}, got {value!r}")
    return value


def _class_ref(data: dict, source: Path, name: str, base: Path, required: bool) -> str:
    value = _field(data, source, name, str, "", required)
    if value and (":" not in value or not value.split(":", 1)[0].endswith(".py")):
        raise ConfigError(source, name, f"expected 'path/to/file.py:ClassName', got {value!r}")
    if not value:
        return ""
    file_part, _, cls = value.partition(":")
    return f"{_absolute(file_part, base)}:{cls}"


def _absolute(path: str, base: Path) -> str:
    candidate = Path(path).expanduser()
    return str(candidate if candidate.is_absolute() else (base / candidate).resolve())


def pick_test_parameters(data: dict, source: Path, batch_size=None, seq_len=None) -> dict:
    """The ``test_parameters`` entry matching --batch-size / --seq-len (the first when none is given)."""
    entries = _field(data, source, "test_parameters", list, [{"batch_size": 1, "seq_len": 64}])
    if not entries or not all(isinstance(e, dict) for e in entries):
        raise ConfigError(source, "test_parameters", "expected a non-empty list of objects")
    for n, entry in enumerate(entries):
        for key in ("batch_size", "seq_len"):
            if not isinstance(entry.get(key), int) or isinstance(entry.get(key), bool) or entry[key] < 1:
                raise ConfigError(source, f"test_parameters[{n}].{key}", "expected a positive integer")
    chosen = [
        e
        for e in entries
        if (batch_size is None or e["batch_size"] == batch_size)
        and (seq_len is None or e["seq_len"] == seq_len)
    ]
    if chosen:
        return chosen[0]
    if batch_size is not None and seq_len is not None:
        return {**entries[0], "batch_size": batch_size, "seq_len": seq_len}
    raise ConfigError(
        source, "test_parameters", f"no entry with batch_size={batch_size} seq_len={seq_len}; give both flags"
    )


def spec_name(data: dict, source: Path) -> str:
    """``model_name`` as a plain file name (it names the results files): other characters become '-'."""
    return _PLAIN.sub("-", _field(data, source, "model_name", str, required=True)).strip("-.") or "model"


def spec_from_validation_config(
    data: dict,
    source: Path,
    base: Path,
    *,
    batch_size: int | None = None,
    seq_len: int | None = None,
    components: list[dict] | None = None,
) -> str:
    """The spec TOML equivalent to a validation JSON (paths made absolute against ``base``)."""
    source = Path(source)
    name = spec_name(data, source)
    model_class = _class_ref(data, source, "model_class", base, required=True)
    config_class = _class_ref(data, source, "config_class", base, required=False)
    weights = _absolute(_field(data, source, "model_path", str, required=True), base)
    hf_class = _field(data, source, "hf_model_class", str) or _architecture(Path(weights), source)
    params = pick_test_parameters(data, source, batch_size, seq_len)
    tp = _field(data, source, "tp_degree", int, 1)
    prompts = _field(data, source, "prompts", list, DEFAULT_PROMPTS)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ConfigError(source, "prompts", "expected a non-empty list of strings")
    components = components if components is not None else _field(data, source, "components", list, [])
    if not all(isinstance(c, dict) for c in components):
        raise ConfigError(source, "components", "expected a list of objects ([[components]] tables)")

    model = {
        "name": name,
        "hf_model_class": hf_class,
        "model_id": data.get("model_name"),
        "weights_path": weights,
    }
    port = {
        "model_class": model_class,
        "target": _field(data, source, "target", str, "torch"),
        "dtype": _field(data, source, "dtype", str, "float32"),
        "batch_size": params["batch_size"],
        "max_seq_len": params["seq_len"],
        "tp_degree": tp,
        "ep_degree": _field(data, source, "ep_degree", int, 1),
    }
    validation = {
        "prompts": prompts,
        "num_tokens_to_check": _field(data, source, "num_tokens_to_check", int, 16),
        "token_match_threshold": _field(data, source, "token_match_threshold", (int, float), 0.95),
    }
    generation = {}
    for key in ("max_ttft_s", "min_tokens_per_s"):
        if key in params:
            if not isinstance(params[key], (int, float)) or isinstance(params[key], bool) or params[key] <= 0:
                raise ConfigError(source, f"test_parameters[].{key}", "expected a positive number")
            generation[key] = params[key]
    lines = [
        f"# Generated by autoport from {source.resolve()}; edit the JSON, not this file.",
        f"# config_class: {config_class or '(none)'}",
        f"# compiled_model_path: {data.get('compiled_model_path', '(none)')}",
        "",
    ]
    for table, values in (("model", model), ("port", port), ("validation", validation)):
        lines += [f"[{table}]", *(_toml_line(k, v) for k, v in values.items()), ""]
    if generation:
        lines += ["[generation]", *(_toml_line(k, v) for k, v in generation.items()), ""]
    for comp in components:
        lines += ["[[components]]", *(_toml_line(k, v) for k, v in comp.items()), ""]
    return "\n".join(lines)


def _architecture(weights: Path, source: Path) -> str:
    try:
        config = json.loads((weights / "config.json").read_text(encoding="utf-8"))
        return config["architectures"][0]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        raise ConfigError(
            source, "model_path", f'{weights}/config.json names no architectures: give "hf_model_class"'
        ) from None


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} into a spec")


def _toml_line(key: str, value) -> str:
    return f"{key} = {_toml_value(value)}"


def write_spec(text: str, out: Path, base: Path):
    """Write the spec atomically and parse it back (without importing the port): a bad value is
    reported with the spec field it became."""
    from .results import write_atomic
    from .spec import load_spec

    write_atomic(out, text)
    try:
        return load_spec(out, base, check_imports=False)
    except SpecError:
        out.unlink(missing_ok=True)
        raise


def components_from_spec(name_or_path: str, base: Path) -> list[dict]:
    from dataclasses import asdict, fields

    from .spec import Component, find_spec_file, load_spec

    spec = load_spec(find_spec_file(name_or_path, base), base, check_imports=False)
    defaults = {f.name: f.default for f in fields(Component) if f.default is not f.default_factory}
    out = []
    for comp in spec.components:
        entry = {k: v for k, v in asdict(comp).items() if k == "name" or v != defaults.get(k, object())}
        if entry.get("layers") == ["first", "last"]:
            entry.pop("layers")
        out.append({k: v for k, v in entry.items() if v not in ("", [])})
    return out


def _convert(args, base: Path) -> str:
    source = Path(args.config)
    data = load_validation_config(source)
    components = components_from_spec(args.spec, base) if getattr(args, "spec", None) else None
    return spec_from_validation_config(
        data, source, base, batch_size=args.batch_size, seq_len=args.seq_len, components=components
    )


# -- the two commands ---------------------------------------------------------------------------------
def add_arguments(parser) -> None:
    """``autoport validate``."""
    import argparse

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = ASSUMED + "\nExit status: 0 passed, 1 failed, 2 bad config (file and field named)."
    _common(parser)
    parser.add_argument("--mode", choices=MODES, default="token", help="golden gate (default token)")
    parser.add_argument("--target", choices=("torch", "nxdi"), help="override the config's target")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")


def _common(parser) -> None:
    parser.add_argument("--config", required=True, help="validation JSON (Autoport's format)")
    parser.add_argument("--batch-size", type=int, help="pick the test_parameters entry with this batch size")
    parser.add_argument("--seq-len", type=int, help="pick the test_parameters entry with this seq_len")
    parser.add_argument("--spec", help="take the [[components]] map from this spec (name or path)")


def run(args) -> int:
    import sys

    import pytest

    base = Path.cwd()
    try:
        text = _convert(args, base)
        name = spec_name(load_validation_config(Path(args.config)), Path(args.config))
        spec_path = write_spec(
            text, base / "agent_artifacts" / "tmp" / "validation" / f"{name}.toml", base
        ).path
    except SpecError as exc:
        print(f"autoport validate: {exc}", file=sys.stderr)
        return 2
    argv = [
        f"--autoport-model={spec_path}",
        f"--autoport-golden-mode={args.mode}",
        f"--autoport-artifacts={base / 'agent_artifacts'}",
        f"--rootdir={base}",
        "-p",
        "no:cacheprovider",
    ]
    if args.target:
        argv.append(f"--autoport-target={args.target}")
    ret = int(pytest.main(argv + list(args.pytest_args)))
    if ret == 0:
        return 0
    return 1 if ret in (1, 2) else 2


def add_spec_arguments(parser) -> None:
    """``autoport spec-from-validation-config``."""
    import argparse

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = ASSUMED
    _common(parser)
    parser.add_argument("--output", "-o", help="spec file to write (default: port_specs/<model_name>.toml)")


def run_spec(args) -> int:
    import sys

    base = Path.cwd()
    try:
        text = _convert(args, base)
        probe = base / "agent_artifacts" / "tmp" / "validation" / "spec.toml"
        spec = write_spec(text, probe, base)
        out = Path(args.output) if args.output else base / "port_specs" / f"{spec.name}.toml"
        from .results import write_atomic

        write_atomic(out, text)
        probe.unlink(missing_ok=True)
    except SpecError as exc:
        print(f"autoport spec-from-validation-config: {exc}", file=sys.stderr)
        return 2
    print(f"spec: {out}")
    return 0
