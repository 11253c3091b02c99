"""Checkpoints on disk: reading HF safetensors, and materialising tiny ones when a spec asks for it.

A tiny checkpoint is an ordinary HF folder (config.json, safetensors, tokenizer files) plus
``autoport_tiny.json`` recording how it was made; it is then loaded through the same path as a
real checkpoint. Nothing here touches a hub.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from .artifacts import RebuildWarning
from .errors import AutoportError, SpecError
from .spec import PortSpec
from .tiny_training import TRAINER_SOURCE, train_on_corpus

TINY_MARKER = "autoport_tiny.json"
CORPUS = Path(__file__).parent / "data" / "tiny_corpus.txt"
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]


TINY_KINDS = ("trained", "random")


@dataclass(frozen=True)
class Weights:
    path: Path
    kind: str  # "checkpoint" (the user's), "tiny-trained" or "tiny-random" (from the spec's [tiny] table)
    rebuilt_after: str | None = None  # a cached tiny checkpoint was corrupt and was rebuilt
    training: dict | None = None  # steps, final loss, seconds

    def to_dict(self) -> dict:
        out = {"path": str(self.path), "kind": self.kind}
        if self.rebuilt_after:
            out["rebuilt_after"] = self.rebuilt_after
        if self.training:
            out["training"] = self.training
        return out


def resolve_weights(spec: PortSpec, spend=None) -> Weights:
    """The spec's weights folder, materialising a tiny checkpoint there if the spec allows it
    (inside ``spend(what, note)``, a context manager that times and announces it, when given).

    A tiny checkpoint is cached: rebuilt only when its recipe (architecture, tiny config, corpus,
    seed, torch and transformers versions) changes or its files fail their checksums.
    """
    path = spec.weights_dir
    marker = path / TINY_MARKER
    if (path / "config.json").is_file() and not marker.is_file():
        return Weights(path, "checkpoint")
    if (path / "config.json").is_file() and not spec.tiny:  # a tiny checkpoint named by a spec without [tiny]
        return Weights(path, f"tiny-{json.loads(marker.read_text()).get('weights', 'checkpoint')}")
    if not spec.tiny:
        if path.exists():
            raise SpecError(spec.path, "model.weights_path", f"{path} holds no config.json")
        raise SpecError(
            spec.path, "model.weights_path", f"{path} does not exist and the spec has no [tiny] table"
        )
    _refuse_foreign_folder(spec, path)
    recipe = _tiny_recipe(spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        _refuse_foreign_folder(spec, path)
        problem = _cached_problem(path, recipe["recipe_hash"])
        if problem == "recipe changed":
            _refuse_other_specs_checkpoint(spec, path)
        if problem is not None:
            with (spend or _no_timing)(*_build_description(spec)):
                _materialise_tiny(spec, recipe, path)
        record = json.loads(marker.read_text())
    rebuilt = problem if problem not in (None, "absent", "recipe changed") else None
    if rebuilt:
        warnings.warn(RebuildWarning(f"tiny checkpoint {path} was rebuilt: {rebuilt}"), stacklevel=2)
    return Weights(path, f"tiny-{record['weights']}", rebuilt_after=rebuilt, training=record.get("training"))


def _build_description(spec: PortSpec) -> tuple[str, str]:
    tiny = spec.tiny or {}
    what = f"building the tiny {tiny.get('model_type', spec.name)} checkpoint"
    if tiny.get("weights", "trained") != "trained":
        return what, "random weights, cached for later runs"
    return what, f"training {tiny.get('train_steps', 300)} steps on one thread, cached for later runs"


@contextlib.contextmanager
def _no_timing(*_):
    yield


def _refuse_foreign_folder(spec: PortSpec, path: Path) -> None:
    """A tiny checkpoint goes only where nothing is, an empty folder, or a folder the harness made."""
    if path.exists() and not path.is_dir():
        raise SpecError(spec.path, "model.weights_path", f"{path} is not a folder; nothing was touched")
    if not path.is_dir() or (path / TINY_MARKER).is_file():
        return
    found = sorted(p.name for p in path.iterdir())
    if found:
        shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
        raise SpecError(
            spec.path,
            "model.weights_path",
            f"{path} holds no config.json and no {TINY_MARKER}: it is not a checkpoint, nor a tiny one "
            f"autoport made, so it is left alone (it holds {shown}); point weights_path at a checkpoint "
            "or at a new folder for the tiny checkpoint",
        )


def _refuse_other_specs_checkpoint(spec: PortSpec, path: Path) -> None:
    """Two specs with different [tiny] recipes on one folder would retrain each other's checkpoint."""
    try:
        record = json.loads((path / TINY_MARKER).read_text())
    except (OSError, json.JSONDecodeError):
        return
    other = record.get("spec") if isinstance(record, dict) else None
    if isinstance(other, dict) and other.get("name") != spec.name:
        raise SpecError(
            spec.path,
            "model.weights_path",
            f"{path} holds the tiny checkpoint of spec {other.get('name')!r} ({other.get('path')}), made "
            f"from a different [tiny] recipe; spec {spec.name!r} ({spec.path}) would retrain it in place. "
            "Give each spec its own weights_path",
        )


def _cached_problem(path: Path, recipe_hash: str) -> str | None:
    """None when the cached tiny checkpoint is intact and current, else what is wrong with it."""
    marker = path / TINY_MARKER
    if not marker.is_file():
        return "absent"
    try:
        record = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        return f"unreadable {TINY_MARKER}: {exc}"
    if record.get("recipe_hash") != recipe_hash:
        return "recipe changed"
    for name, digest in record.get("files", {}).items():
        file = path / name
        if not file.is_file():
            return f"missing file {name}"
        if hashlib.sha256(file.read_bytes()).hexdigest() != digest:
            return f"checksum mismatch in {name}"
    return None


def _tiny_recipe(spec: PortSpec) -> dict:
    import torch
    import transformers

    overrides = dict(spec.tiny)
    recipe = {
        "hf_model_class": spec.model.hf_model_class,
        "overrides": overrides,
        "corpus_sha256": hashlib.sha256(CORPUS.read_bytes()).hexdigest(),
        "trainer_sha256": hashlib.sha256(TRAINER_SOURCE.read_bytes()).hexdigest(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    recipe["recipe_hash"] = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    return recipe


def _materialise_tiny(spec: PortSpec, recipe: dict, dest: Path) -> None:
    import torch
    import transformers

    overrides = copy.deepcopy(recipe["overrides"])  # transformers edits nested tables (rope_scaling) in place
    model_type = overrides.pop("model_type", None)
    seed = overrides.pop("seed", 0)
    quantize = overrides.pop("quantize", None)
    kind = overrides.pop("weights", "trained")
    train_steps = overrides.pop("train_steps", 300)
    train_lr = overrides.pop("train_lr", 3e-3)
    if isinstance(train_steps, bool) or not isinstance(train_steps, int) or train_steps < 1:
        raise SpecError(spec.path, "tiny.train_steps", f"expected a positive integer, got {train_steps!r}")
    if isinstance(train_lr, bool) or not isinstance(train_lr, (int, float)) or not train_lr > 0:
        raise SpecError(spec.path, "tiny.train_lr", f"expected a positive number, got {train_lr!r}")
    if kind not in TINY_KINDS:
        raise SpecError(spec.path, "tiny.weights", f"expected one of {TINY_KINDS}, got {kind!r}")
    if model_type is None:
        raise SpecError(spec.path, "tiny.model_type", 'missing (e.g. model_type = "llama")')
    model_cls = getattr(transformers, spec.model.hf_model_class, None)
    if model_cls is None:
        raise SpecError(
            spec.path,
            "model.hf_model_class",
            f"transformers {transformers.__version__} has no {spec.model.hf_model_class}",
        )

    tokenizer = build_tokenizer(int(overrides.get("vocab_size", 512)))
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in SPECIAL_TOKENS}
    try:
        config = transformers.AutoConfig.for_model(
            model_type,
            pad_token_id=ids["<pad>"],
            bos_token_id=ids["<s>"],
            eos_token_id=ids["</s>"],
            **overrides,
        )
    except (ValueError, TypeError) as exc:
        raise SpecError(spec.path, "tiny", f"cannot build a {model_type} config: {exc}") from None
    if config.is_encoder_decoder:
        close_inputs_with_eos(tokenizer)

    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        torch.manual_seed(seed)
        model = model_cls(config).eval()
        training = None
        if kind == "trained":
            training = train_on_corpus(
                model,
                tokenizer,
                CORPUS.read_text(encoding="utf-8"),
                steps=train_steps,
                seed=seed,
                lr=train_lr,
            )
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        if quantize:
            from .quantization import quantize_checkpoint

            try:
                quantize_checkpoint(staging, quantize, config)
            except ValueError as exc:
                raise SpecError(spec.path, "tiny.quantize", str(exc)) from None
        files = {
            p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(staging.iterdir())
            if p.is_file()
        }
        record = {"weights": kind, "seed": seed, "training": training, "files": files, **recipe}
        record["spec"] = {"name": spec.name, "path": str(spec.path)}
        (staging / TINY_MARKER).write_text(json.dumps(record, indent=2))
        _refuse_foreign_folder(spec, dest)
        if dest.is_symlink():
            raise SpecError(
                spec.path,
                "model.weights_path",
                f"{dest} is a symbolic link: the tiny checkpoint is not rebuilt through it (point "
                "weights_path at the link's target, or remove the link)",
            )
        if (dest / TINY_MARKER).is_file():
            shutil.rmtree(dest)  # the harness's own earlier checkpoint: its marker proves it
        elif dest.is_dir():
            dest.rmdir()  # empty (checked above)
        os.replace(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def build_tokenizer(vocab_size: int):
    """A byte-level BPE tokenizer trained on the bundled corpus, wrapped as an HF fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train([str(CORPUS)], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def close_inputs_with_eos(tokenizer) -> None:
    """Append ``</s>`` to every encoded text, as T5's tokenizer does: an encoder-decoder model then
    sees where its input ends."""
    from tokenizers import processors

    eos = tokenizer.eos_token
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {eos}",
        pair=f"$A {eos} $B {eos}",
        special_tokens=[(eos, tokenizer.eos_token_id)],
    )


def safetensors_files(folder: Path) -> list[str]:
    """The checkpoint's safetensors file names: its index's shards, else every ``*.safetensors``."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return sorted(set(json.loads(index.read_text())["weight_map"].values()))
    return sorted(p.name for p in folder.glob("*.safetensors"))


def load_state_dict(weights_dir: Path, leave_out=None) -> dict:
    """Every tensor of an HF safetensors checkpoint (sharded or not), by its HF key; ``leave_out(keys)``:
    the keys of a file not to read (the later layers in reduced-layer mode)."""
    from safetensors import SafetensorError, safe_open

    files = safetensors_files(weights_dir)
    if not files:
        raise AutoportError(f"{weights_dir}: no *.safetensors files (only safetensors checkpoints are read)")
    state_dict = {}
    for name in files:
        try:
            with safe_open(weights_dir / name, framework="pt") as handle:
                keys = list(handle.keys())
                skipped = set(leave_out(keys)) if leave_out else set()
                state_dict.update((key, handle.get_tensor(key)) for key in keys if key not in skipped)
        except (SafetensorError, OSError) as exc:
            raise AutoportError(f"{weights_dir / name}: cannot read safetensors: {exc}") from None
    return state_dict
