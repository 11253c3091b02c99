"""``autoport verdict SPEC``: the staged verdict as a command, for people who do not think in pytest."""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("spec", help="spec name in port_specs/ (e.g. llama) or path to a spec file")
    parser.add_argument("--target", choices=("torch", "nxdi"), help="override the spec's target")
    parser.add_argument("--dry-run", action="store_true", help="run only the stages that need no target")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --), e.g. -- -k mlp -x")


def run(args) -> int:
    import pytest

    # this command imported the plugin before pytest started, so pytest cannot rewrite its asserts (it
    # has none that need rewriting): that warning would only be noise
    argv = [
        f"--autoport-model={args.spec}",
        "-p",
        "no:cacheprovider",
        "-W",
        "ignore::pytest.PytestAssertRewriteWarning",
    ]
    if args.target:
        argv.append(f"--autoport-target={args.target}")
    if args.dry_run:
        argv.append("--autoport-dry-run")
    return int(pytest.main(argv + list(args.pytest_args)))
