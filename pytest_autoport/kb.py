"""The knowledge base in ``kb/``: each topic's ``## Signatures`` list holds regular expressions over
failure messages, so a failing stage can name its likely cause; ``autoport kb search TEXT``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

# an installed wheel holds the knowledge base inside the package; a checkout has it at the repository root
_PACKAGED_KB = Path(__file__).resolve().parent / "kb_topics"
KB_DIR = _PACKAGED_KB if _PACKAGED_KB.is_dir() else Path(__file__).resolve().parents[1] / "kb"
# topics tried in this order: the more specific first (a norm inside attention is a norm problem)
ORDER = (
    "checkpoint_folder",
    "weight_conversion",
    "norms",
    "moe",
    "embeddings_and_tied_heads",
    "mlp_and_fused_weights",
    "attention_and_rope",
    "sliding_window",
    "compilation_errors",
    "sharding_and_memory",
    "accuracy_debugging",
)


@dataclass(frozen=True)
class Topic:
    file: str  # kb/<name>.md
    title: str
    text: str
    signatures: tuple[re.Pattern, ...]


@cache
def topics(folder: Path = KB_DIR) -> tuple[Topic, ...]:
    found = {}
    for path in sorted(folder.glob("*.md")) if folder.is_dir() else []:
        text = path.read_text(encoding="utf-8")
        title = text.splitlines()[0].lstrip("# ").strip() if text else path.stem
        section = text.split("## Signatures", 1)[1] if "## Signatures" in text else ""
        patterns = tuple(
            re.compile(m, re.MULTILINE) for m in re.findall(r"^- `(.+)`\s*$", section, re.MULTILINE)
        )
        found[path.stem] = Topic(f"kb/{path.name}", title, text, patterns)
    ranked = [found.pop(name) for name in ORDER if name in found]
    return tuple(ranked + list(found.values()))


def likely_cause(message: str) -> Topic | None:
    """The first topic (in ``ORDER``) with a signature the message matches."""
    for topic in topics():
        if any(p.search(message) for p in topic.signatures):
            return topic
    return None


def search(text: str) -> list[Topic]:
    """Topics whose signatures match ``text`` first, then by shared words."""
    words = {w for w in re.findall(r"[a-z_]{3,}", text.lower())}
    matched = [t for t in topics() if any(p.search(text) for p in t.signatures)]

    def overlap(topic):
        return len(words & set(re.findall(r"[a-z_]{3,}", topic.text.lower())))

    rest = sorted((t for t in topics() if t not in matched and overlap(t)), key=overlap, reverse=True)
    return matched + rest


def add_arguments(parser) -> None:
    parser.add_argument("action", choices=("search",), help="search: the entries for an error text")
    parser.add_argument("text", nargs="+", help="error text or keywords")


def run(args) -> int:
    hits = search(" ".join(args.text))
    if not hits:
        print("no knowledge-base entry matches")
        return 1
    for topic in hits[:5]:
        print(f"{topic.file}: {topic.title}")
    return 0
