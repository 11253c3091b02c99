"""``autoport analyze MODEL``: the architecture report of a checkpoint folder, a config.json or a
transformers model type (with ``--set key=value`` overrides), and its pre-flight checks."""

from __future__ import annotations

import json
import sys


def add_arguments(parser) -> None:
    parser.add_argument(
        "model", help="checkpoint folder, config.json, or transformers model type (e.g. phi3)"
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel degree for the pre-flight checks")
    parser.add_argument(
        "--ep", type=int, default=1, help="expert-parallel degree (MoE) for the pre-flight checks"
    )
    parser.add_argument("--seq-len", type=int, default=None, help="sequence length for the pre-flight checks")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def parse_overrides(pairs: list[str]) -> dict:
    """``["num_hidden_layers=2", "hidden_act=silu"]`` -> typed values (JSON where it parses)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"autoport analyze: --set {pair!r}: expected KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def run(args) -> int:
    from .analyze import analyze, format_report, load_config, preflight
    from .errors import AutoportError

    try:
        report = analyze(load_config(args.model, parse_overrides(args.set)))
    except AutoportError as exc:
        print(f"autoport analyze: {exc}", file=sys.stderr)
        return 2
    problems = preflight(report, args.tp, args.seq_len, ep_degree=args.ep)
    report["preflight"] = {
        "tp_degree": args.tp,
        "ep_degree": args.ep,
        "seq_len": args.seq_len,
        "problems": problems,
    }
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print(format_report(report))
        print(f"\npre-flight (tp {args.tp}, seq_len {args.seq_len}): " + ("ok" if not problems else ""))
        for problem in problems:
            print(f"  - {problem}")
    return 1 if problems else 0
