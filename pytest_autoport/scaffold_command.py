"""``autoport scaffold MODEL --name NAME``: write a spec and a port skeleton into this project."""

from __future__ import annotations

import sys
from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument(
        "model", help="checkpoint folder, config.json, or transformers model type (e.g. phi3)"
    )
    parser.add_argument("--name", required=True, help="port name: port_specs/NAME.toml, neuron_port/NAME/")
    parser.add_argument("--target", choices=("torch", "nxdi"), default="torch")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--root", default=".", help="project folder (default: the current one)")


def run(args) -> int:
    from .analyze_command import parse_overrides
    from .errors import AutoportError
    from .scaffold import scaffold

    try:
        written = scaffold(args.model, args.name, Path(args.root), args.target, parse_overrides(args.set))
    except AutoportError as exc:
        print(f"autoport scaffold: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    print(f"next: pytest --autoport-model={args.name}   (or: autoport verdict {args.name})")
    return 0
