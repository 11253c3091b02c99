"""The knowledge base in ``kb/``: each topic's ``## Signatures`` list holds regular expressions over
failure messages and its ``## Metric signatures`` list conditions over a failing stage's figures
(``kb_metrics``), so a failing stage can name its likely cause; ``autoport kb search TEXT``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from .kb_metrics import MetricSignature, parse

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
    "kv_cache_and_decoding",
    "accuracy_debugging",
)


@dataclass(frozen=True)
class Topic:
    file: str  # kb/<name>.md
    title: str
    text: str
    signatures: tuple[re.Pattern, ...]
    metric_signatures: tuple[MetricSignature, ...] = ()

    @property
    def name(self) -> str:
        return self.file.removeprefix("kb/").removesuffix(".md")


@dataclass(frozen=True)
class Cause:
    """A likely cause: the topic, and the metric signature that named it (None: the message did)."""

    topic: Topic
    metric: MetricSignature | None = None

    def line(self) -> str:
        why = f": {self.metric.why}" if self.metric and self.metric.why else ""
        return f"likely cause: {self.topic.title}{why} ({self.topic.file})"

    def to_dict(self) -> dict:
        return {
            "file": self.topic.file,
            "title": self.topic.title,
            "signature": self.metric.text if self.metric else "message",
            "why": self.metric.why if self.metric else "",
        }


@cache
def topics(folder: Path = KB_DIR) -> tuple[Topic, ...]:
    found = {}
    for path in sorted(folder.glob("*.md")) if folder.is_dir() else []:
        text = path.read_text(encoding="utf-8")
        title = text.splitlines()[0].lstrip("# ").strip() if text else path.stem
        patterns = tuple(re.compile(m, re.MULTILINE) for m in _entries(text, "Signatures"))
        metrics = tuple(parse(m, f"kb/{path.name}") for m in _entries(text, "Metric signatures", raw=True))
        found[path.stem] = Topic(f"kb/{path.name}", title, text, patterns, metrics)
    ranked = [found.pop(name) for name in ORDER if name in found]
    return tuple(ranked + list(found.values()))


def _entries(text: str, heading: str, raw: bool = False) -> list[str]:
    """The ``- `...``` entries of a ``## heading`` section (up to the next heading): the backticked
    text, or (``raw``) the whole entry after the dash."""
    match = re.search(rf"^## {heading}\s*$(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    if match is None:
        return []
    if raw:
        return re.findall(r"^- (`.+`.*?)\s*$", match.group(1), re.MULTILINE)
    return re.findall(r"^- `(.+)`\s*$", match.group(1), re.MULTILINE)


def likely_cause(message: str) -> Topic | None:
    """The first topic (in ``ORDER``) with a signature the message matches."""
    for topic in topics():
        if any(p.search(message) for p in topic.signatures):
            return topic
    return None


def likely_cause_of(message: str, facts: dict | None = None) -> Cause | None:
    """A failing stage's likely cause: the first topic (in ``ORDER``) with a metric signature that its
    ``facts`` (``kb_metrics.stage_facts``) meet, else the first whose signatures match the message."""
    for topic in topics() if facts else ():
        metric = next((m for m in topic.metric_signatures if m.matches(facts)), None)
        if metric is not None:
            return Cause(topic, metric)
    topic = likely_cause(message)
    return Cause(topic) if topic is not None else None


def search(text: str) -> list[Topic]:
    """Topics whose signatures match ``text`` first, then by shared words."""
    words = {w for w in re.findall(r"[a-z_]{3,}", text.lower())}
    matched = [t for t in topics() if any(p.search(text) for p in t.signatures)]

    def overlap(topic):  # words of a metric signature's description count twice
        whys = " ".join(m.why for m in topic.metric_signatures).lower()
        return len(words & set(re.findall(r"[a-z_]{3,}", topic.text.lower()))) + len(
            words & set(re.findall(r"[a-z_]{3,}", whys))
        )

    rest = sorted((t for t in topics() if t not in matched and overlap(t)), key=overlap, reverse=True)
    return matched + rest


def add_arguments(parser) -> None:
    parser.add_argument(
        "action",
        choices=("search", "show"),
        help="search: the entries for an error text; show: print a topic (kb/<topic>.md)",
    )
    parser.add_argument("text", nargs="+", help="error text or keywords; for show, the topic's name")


def run(args) -> int:
    if args.action == "show":
        return _show(" ".join(args.text))
    hits = search(" ".join(args.text))
    if not hits:
        print("no knowledge-base entry matches")
        return 1
    for topic in hits[:5]:
        print(f"{topic.file}: {topic.title}   (autoport kb show {topic.name})")
    return 0


def _show(name: str) -> int:
    """Print a topic, found by name, file name or ``kb/<name>.md`` as the likely-cause lines write it."""
    wanted = name.strip().removeprefix("kb/").removesuffix(".md")
    for topic in topics():
        if topic.name == wanted:
            print(f"# {KB_DIR / (topic.name + '.md')}\n")
            print(topic.text)
            return 0
    known = ", ".join(t.name for t in topics())
    print(f"no knowledge-base topic {name!r}; topics: {known}")
    return 1
