"""Checks of a spec's input beyond the types of its fields, each reported as one ``SpecError``.

``check_text`` needs nothing but the spec (it runs inside ``load_spec``); ``check_tiny_keys`` needs
transformers, and ``check_against_model`` the tokenized prompts and the HF layer count, so those two run
where the session is built, at collection, before any stage item runs.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

from .errors import SpecError

PLAIN_NAME = re.compile(r"[A-Za-z0-9_.+-]+")
HARNESS_TINY_KEYS = ("model_type", "seed", "weights", "train_steps", "train_lr", "quantize")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_weights_path(spec) -> None:
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


def check_text(spec) -> None:
    """``model.name`` names the output files, so it must be a plain file name; prompts must hold text."""
    name = spec.model.name
    if not PLAIN_NAME.fullmatch(name) or name in (".", ".."):
        raise SpecError(
            spec.path,
            "model.name",
            f"{name!r} is not a plain name (letters, digits, '_', '.', '+', '-'; no path): "
            "it names the results files",
        )
    for i, prompt in enumerate(spec.validation.prompts):
        if not prompt.strip():
            raise SpecError(spec.path, f"validation.prompts[{i}]", f"{prompt!r} is empty: give it some text")


def check_source_files(spec) -> None:
    """``model.modeling_file`` / ``model.config_file`` name the HF source files of the model: plain
    file names, which must exist in ``model.model_source_dir`` when that is given."""
    m = spec.model
    source_dir = spec.resolve(m.model_source_dir) if m.model_source_dir else None
    if source_dir is not None and not source_dir.is_dir():
        raise SpecError(spec.path, "model.model_source_dir", f"{source_dir} is not a folder")
    for field_name in ("modeling_file", "config_file"):
        value = getattr(m, field_name)
        if not value:
            continue
        if not PLAIN_NAME.fullmatch(value):
            raise SpecError(spec.path, f"model.{field_name}", f"{value!r} is not a plain file name")
        if source_dir is not None and not (source_dir / value).is_file():
            raise SpecError(spec.path, f"model.{field_name}", f"{value} is not in {source_dir}")


def spec_warnings(spec) -> list[str]:
    """What the verdict should warn about though the spec is valid."""
    if not spec.components:
        return [
            "no component checks: add [[components]] tables to the spec, so a failing model check "
            "names the module that diverges"
        ]
    return []


def check_tiny_keys(spec) -> None:
    """Every ``[tiny]`` key is the harness's own or a setting that transformers' config class or modeling
    code for ``model_type``, or the port itself, reads: a misspelt key would otherwise be stored on the
    config and silently ignored while the tiny model trains."""
    if not spec.tiny:
        return
    import transformers

    model_type = spec.tiny.get("model_type")
    if not isinstance(model_type, str):
        return  # reported where the tiny checkpoint is built
    try:
        config = transformers.AutoConfig.for_model(model_type)
    except (ValueError, KeyError):
        known_types = list(getattr(transformers, "CONFIG_MAPPING", {}).keys())
        raise SpecError(
            spec.path,
            "tiny.model_type",
            f"transformers {transformers.__version__} knows no model type {model_type!r}{_hint(model_type, known_types)}",
        ) from None
    settings = _config_keys(config)
    words = settings | _source_words(type(config)) | _port_words(spec)
    for key in spec.tiny:
        if key not in HARNESS_TINY_KEYS and key not in words:
            raise SpecError(
                spec.path,
                f"tiny.{key}",
                f"unknown key: neither the harness nor {type(config).__name__} "
                f"(transformers {transformers.__version__}) nor the port reads it"
                + _hint(key, sorted(settings | set(HARNESS_TINY_KEYS))),
            )


def check_against_model(spec, prompt_ids: list[list[int]], num_layers: int) -> None:
    """Prompts fit the buckets with the tokens to check; component layers exist in the model."""
    p, v = spec.port, spec.validation
    lengths = [len(ids) for ids in prompt_ids]
    longest = max(range(len(lengths)), key=lengths.__getitem__)
    where = f"validation.prompts[{longest}]"
    if lengths[longest] > p.context_bucket_list[-1]:
        raise SpecError(
            spec.path,
            where,
            f"{lengths[longest]} tokens do not fit the largest context bucket ({p.context_bucket_list[-1]}): "
            "shorten the prompt or raise port.context_buckets / port.max_seq_len",
        )
    new_tokens = {"validation.num_tokens_to_check": v.num_tokens_to_check}
    if spec.generation.max_new_tokens:
        new_tokens["generation.max_new_tokens"] = spec.generation.max_new_tokens
    for field_name, count in new_tokens.items():
        if p.is_encoder_decoder:
            if 1 + count > p.max_seq_len:
                raise SpecError(
                    spec.path,
                    field_name,
                    f"the decoder start token + {count} tokens exceed port.max_seq_len ({p.max_seq_len})",
                )
        elif lengths[longest] + count > p.max_seq_len:
            raise SpecError(
                spec.path,
                field_name,
                f"{where} has {lengths[longest]} tokens; + {count} tokens to generate = "
                f"{lengths[longest] + count}, more than port.max_seq_len ({p.max_seq_len})",
            )
    for k, comp in enumerate(spec.components):
        if not comp.per_layer:
            continue
        for entry in comp.layers:
            if isinstance(entry, int) and not -num_layers <= entry < num_layers:
                raise SpecError(
                    spec.path,
                    f"components[{k}].layers",
                    f"layer {entry} of component {comp.name!r} does not exist: "
                    f"the model has {num_layers} layers (0..{num_layers - 1}, or -{num_layers}..-1)",
                )


def _hint(word: str, candidates) -> str:
    close = difflib.get_close_matches(word, candidates, n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def _config_keys(config) -> set[str]:
    import inspect

    keys = set(config.to_dict()) | set(getattr(type(config), "attribute_map", {}))
    for klass in type(config).__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            params = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):
            continue
        keys |= {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    keys.discard("self")
    return keys


def _source_words(config_cls) -> set[str]:
    """Identifiers in transformers' config and modeling code for this config class (some settings,
    such as ``rope_theta`` or ``head_dim``, are read from kwargs or with getattr only)."""
    import importlib
    import inspect

    names = (
        config_cls.__module__,
        config_cls.__module__.replace(".configuration_", ".modeling_"),
        "transformers.configuration_utils",
        "transformers.modeling_rope_utils",
    )
    words: set[str] = set()
    for name in names:
        try:
            words |= set(_WORD.findall(inspect.getsource(importlib.import_module(name))))
        except (ImportError, OSError, TypeError):
            continue
    return words


def _port_words(spec) -> set[str]:
    """Identifiers in the port's package: a port may read a setting the installed transformers lacks."""
    folder = spec.port_class_file.parent
    while (folder / "__init__.py").is_file() and (folder.parent / "__init__.py").is_file():
        folder = folder.parent
    files = folder.rglob("*.py") if (folder / "__init__.py").is_file() else [spec.port_class_file]
    words: set[str] = set()
    for file in files:
        try:
            words |= set(_WORD.findall(Path(file).read_text(encoding="utf-8", errors="replace")))
        except OSError:
            continue
    return words
