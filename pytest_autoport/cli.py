"""The ``autoport`` console script. Each subcommand lives in the module that owns its job;
this file only routes to them, importing lazily so ``autoport --help`` stays instant."""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, help); the module defines add_arguments(parser) and run(args) -> int
COMMANDS = {
    "verdict": ("pytest_autoport.verdict_command", "run the staged verdict for a spec (wraps pytest)"),
    "env": ("pytest_autoport.envcheck", "check this machine: packages, NeuronCores, runnable stages"),
    "clean-cache": ("pytest_autoport.artifacts", "classify and purge compiled-artifact caches"),
    "validate": (
        "pytest_autoport.validate_command",
        "Autoport's validation tool: JSON config, --mode token|logit|all",
    ),
    "spec-from-validation-config": (
        "pytest_autoport.spec_from_validation_command",
        "convert a validation JSON into a spec",
    ),
    "kb": ("pytest_autoport.kb", "search the knowledge base: autoport kb search TEXT"),
    "scaffold": ("pytest_autoport.scaffold_command", "write a spec and a port skeleton for an architecture"),
    "analyze": (
        "pytest_autoport.analyze_command",
        "what an HF architecture is made of, and its pre-flight checks",
    ),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="autoport", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text)
        command_parser.set_defaults(_module=module_name)
        _module(module_name).add_arguments(command_parser)
    args = parser.parse_args(argv)
    return int(_module(args._module).run(args) or 0)


def _module(name: str):
    return importlib.import_module(name)


if __name__ == "__main__":
    sys.exit(main())
