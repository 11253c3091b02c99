"""The HF golden on disk: what the golden stage needs from the FP32 reference, computed once and reused.

An entry holds the greedy golden tokens and, per prompt, the teacher-forced HF logits at every golden
position (FP32, and in the port's low precision for a low-precision port: the decode-step parity and the
logit check compare whole rows, so the rows are kept whole), with per-position summaries beside them
(top-k ids and values, logsumexp). It lives in ``<artifacts>/golden/<spec>-<key>/``, built and checked
by the artifact store (temporary folder, per-key lock, checksummed manifest sealed by READY), so a
corrupt or half-written entry is detected, removed and rebuilt. The key covers the checkpoint's content
(weights, config, tokenizer and generation files), the prompts and their token ids, the generation
settings, the dtypes, the transformers version and the code that computes the golden; it holds no
path, so a folder copied to another machine (a Neuron runner) is found there. Only the HF side is cached:
the port's side of every comparison is computed on each run.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from .artifacts import (
    GOLDEN_DIR,
    GOLDEN_FAILURES_DIR,
    ArtifactStore,
    EntryState,
    RebuildWarning,
    artifact_key,
    verify_entry,
)
from .checksums import REFERENCE_PATTERNS, checkpoint_fingerprint

GOLDEN_FORMAT = 1  # what an entry holds and how; bump when that changes
TOKENS_FILE = "tokens.json"
LOGITS_FILE = "logits.safetensors"
SUMMARY_TOP_K = 20
CHECKSUM_CACHE = Path("data") / "checkpoint_checksums.json"
_SOURCES = ("golden_cache.py", "hf_reference.py", "quantization.py")


@dataclass
class GoldenReference:
    tokens: list[list[int]]
    logits: list  # per prompt [steps, vocab] float32: HF FP32 predicting each golden token
    logits_lp: list | None  # the same from HF in the port's low precision; None for an FP32 port
    cache: str  # hit | miss | rebuilt
    entry: str  # the entry's folder, relative to the artifacts folder
    hf_seconds: float  # spent on the HF model by this run for the golden (0 on a hit)
    rebuilt_after: str | None = None

    def figures(self) -> dict:
        out = {"cache": self.cache, "cache_entry": self.entry, "hf_seconds": round(self.hf_seconds, 3)}
        if self.rebuilt_after:
            out["cache_rebuilt_after"] = self.rebuilt_after
        return out


def golden_store(artifacts: Path) -> ArtifactStore:
    return ArtifactStore(Path(artifacts) / GOLDEN_DIR, Path(artifacts) / GOLDEN_FAILURES_DIR)


def low_precision_dtype(session) -> str | None:
    dtype = session.spec.port.dtype
    return None if dtype == "float32" else dtype


def key_inputs(session) -> dict:
    """Everything that changes the golden; no path, so a copied cache folder is found again."""
    import transformers

    spec = session.spec
    return {
        "format": GOLDEN_FORMAT,
        "code_sha256": code_fingerprint(),
        "checkpoint": checkpoint_fingerprint(
            session.weights.path, session.artifacts / CHECKSUM_CACHE, REFERENCE_PATTERNS
        ),
        "hf_model_class": spec.model.hf_model_class,
        "layers": session.layers_record,  # --autoport-layers: the golden of the cut model
        "prompts": list(spec.validation.prompts),
        "prompt_ids": session.prompt_ids,
        "generation": {
            "greedy": True,
            "num_beams": 1,
            "new_tokens": spec.validation.num_tokens_to_check,
            "pad_token_id": session.tokenizer.pad_token_id,
            "encoder_decoder": session.is_encoder_decoder,
        },
        "dtype": "float32",
        "low_precision_dtype": low_precision_dtype(session),
        "transformers": transformers.__version__,
    }


def code_fingerprint() -> str:
    package = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for name in _SOURCES:
        digest.update(name.encode() + b"\0" + (package / name).read_bytes() + b"\0")
    return digest.hexdigest()


def golden_reference(session, regen: bool = False) -> GoldenReference:
    """The golden from the cache, or computed (and stored) when the cache has no sound entry for its key;
    ``regen`` rebuilds it whatever is there."""
    store = golden_store(session.artifacts)
    name, inputs = session.spec.name, key_inputs(session)
    key = artifact_key(inputs)
    path = store.entry_path(name, key)
    forced = None
    if regen and path.exists():
        if store.drop(EntryState(path, name, key, "ready")) == "removed":
            forced = "requested (--autoport-regen-golden)"
    spent = [0.0]

    def build(folder: Path) -> dict:
        started = time.perf_counter()
        tokens, fp32, lp = compute(session)
        spent[0] += time.perf_counter() - started
        return write_entry(folder, tokens, fp32, lp)

    if verify_entry(path, name, key)[0] is not None:
        started = time.perf_counter()  # load it outside the build: too large, it fails with its own message
        session.hf_model  # noqa: B018
        spent[0] += time.perf_counter() - started
    entry = store.get_or_build(name, inputs, build)
    problem = entry.recovered_from
    try:
        tokens, fp32, lp = read_entry(entry.path, low_precision_dtype(session) is not None)
    except (OSError, ValueError, KeyError) as exc:  # sound checksums, unusable content: rebuilt once
        problem = f"unreadable content ({exc})"
        store.drop(EntryState(entry.path, name, key, "ready"))
        entry = store.get_or_build(name, inputs, build)
        tokens, fp32, lp = read_entry(entry.path, low_precision_dtype(session) is not None)
    if problem:
        warnings.warn(RebuildWarning(f"golden cache {entry.path} rebuilt: {problem}"), stacklevel=2)
    for leftover in entry.cleaned:
        warnings.warn(
            RebuildWarning(f"removed {leftover}, the temporary folder of a killed build"), stacklevel=2
        )
    status = "hit" if not entry.built else ("rebuilt" if problem or forced else "miss")
    where = f"{GOLDEN_DIR}/{entry.path.name}"
    return GoldenReference(tokens, fp32, lp, status, where, spent[0], problem or forced)


def compute(session):
    """(greedy golden tokens, FP32 teacher-forced logits, low-precision ones or None) from the HF model."""
    from .hf_reference import greedy_golden, teacher_forced_logits

    start = session.hf_config.decoder_start_token_id if session.is_encoder_decoder else None
    tokens = greedy_golden(
        session.hf_model,
        session.prompt_ids,
        session.spec.validation.num_tokens_to_check,
        session.tokenizer.pad_token_id,
        encoder_decoder=session.is_encoder_decoder,
    )
    fp32 = teacher_forced_logits(session.hf_model, session.prompt_ids, tokens, start)
    lp = None
    if low_precision_dtype(session) is not None:
        lp = teacher_forced_logits(session.hf_model_lp, session.prompt_ids, tokens, start)
    return tokens, fp32, lp


def write_entry(folder: Path, tokens: list[list[int]], fp32: list, lp: list | None) -> dict:
    """Write an entry's files into ``folder``; returns the build record for its manifest."""
    import torch
    import transformers
    from safetensors.torch import save_file

    tensors = {}
    for i, logits in enumerate(fp32):
        tensors[f"fp32.{i}"] = logits.contiguous()
        top = torch.topk(logits, min(SUMMARY_TOP_K, logits.shape[-1]), dim=-1)
        tensors[f"top_ids.{i}"] = top.indices.to(torch.int32).contiguous()
        tensors[f"top_values.{i}"] = top.values.contiguous()
        tensors[f"logsumexp.{i}"] = torch.logsumexp(logits, dim=-1).contiguous()
        if lp is not None:
            tensors[f"lp.{i}"] = lp[i].float().contiguous()
    save_file(tensors, str(folder / LOGITS_FILE))
    (folder / TOKENS_FILE).write_text(json.dumps({"tokens": tokens}) + "\n", encoding="utf-8")
    return {
        "prompts": len(tokens),
        "new_tokens": [len(t) for t in tokens],
        "vocab": int(fp32[0].shape[-1]) if fp32 else 0,
        "low_precision": lp is not None,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def read_entry(folder: Path, with_lp: bool):
    """(tokens, FP32 logits, low-precision logits or None) from an entry; ValueError when inconsistent."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    tokens = json.loads((folder / TOKENS_FILE).read_text(encoding="utf-8"))["tokens"]
    try:
        tensors = load_file(str(folder / LOGITS_FILE))
    except SafetensorError as exc:
        raise ValueError(f"{LOGITS_FILE}: {exc}") from None
    fp32 = [tensors[f"fp32.{i}"] for i in range(len(tokens))]
    lp = [tensors[f"lp.{i}"] for i in range(len(tokens))] if with_lp else None
    for i, row in enumerate(tokens):
        shapes = {tuple(t[i].shape[:1]) for t in (fp32, lp) if t is not None}
        if not isinstance(row, list) or shapes != {(len(row),)}:
            raise ValueError(f"prompt {i}: {len(row)} tokens but logits of shape {sorted(shapes)}")
    return tokens, fp32, lp
