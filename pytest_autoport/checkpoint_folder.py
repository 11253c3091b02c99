"""What a checkpoint folder must hold for the verdict: a config, weights and a tokenizer.

Checked once, at the ``weights`` stage, so a folder without a tokenizer fails there with one line
instead of every later stage failing with transformers' traceback."""

from __future__ import annotations

from pathlib import Path

WEIGHT_PATTERNS = ("*.safetensors", "model.safetensors.index.json")  # what the harness reads
# any one of these makes a tokenizer transformers can load (given its backend package)
TOKENIZER_FILES = (
    "tokenizer.json",  # fast tokenizer (tokenizers)
    "tokenizer.model",  # sentencepiece (Llama 2, Mistral, Gemma)
    "spiece.model",  # sentencepiece (T5)
    "vocab.json",  # BPE with merges.txt (GPT-2 style)
    "vocab.txt",  # WordPiece
    "tokenizer.tiktoken",
)


def missing_files(folder: Path) -> list[str]:
    """One phrase per missing part, empty when the folder is complete."""
    folder = Path(folder)
    missing = []
    if not (folder / "config.json").is_file():
        missing.append("config.json")
    if not any(any(folder.glob(pattern)) for pattern in WEIGHT_PATTERNS):
        if any(folder.glob("pytorch_model*.bin")):
            missing.append(
                "safetensors weights (it holds pytorch_model*.bin, which the harness does not read: convert "
                "with from_pretrained(folder) then save_pretrained(folder, safe_serialization=True))"
            )
        else:
            missing.append("weights (*.safetensors)")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES) and not any(folder.glob("*.tiktoken")):
        missing.append(f"tokenizer files (one of {', '.join(TOKENIZER_FILES)})")
    return missing


def folder_problem(folder: Path) -> str | None:
    """The one-line message for an incomplete folder, or None."""
    missing = missing_files(folder)
    if not missing:
        return None
    return (
        f"checkpoint folder {folder} lacks {'; '.join(missing)}: save them beside the weights "
        "(model.save_pretrained(folder) and tokenizer.save_pretrained(folder))"
    )


def tokenizer_problem(load) -> str | None:
    """``load()`` builds the tokenizer; its failure as one line (transformers' last message line)."""
    try:
        load()
    except Exception as exc:  # any loader failure is reported, never re-raised per stage
        lines = [line for line in str(exc).strip().splitlines() if line.strip()]
        return f"the tokenizer does not load: {type(exc).__name__}: {lines[-1] if lines else ''}"
    return None
