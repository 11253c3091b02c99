"""Environment checker: which packages import here, whether NeuronCores exist, which stages can run.

One checker serves three callers: the ``env`` stage and the pytest report header
(``check_environment()``), the ``autoport env`` command (``add_arguments`` / ``run``), and the setup
script's validation step (``python -m pytest_autoport.envcheck --check-env``, the equivalent of
Autoport's ``check_env.py``).

Packages are imported in a child interpreter (``package_probe``); NeuronCores come from
``/dev/neuron*`` and ``neuron-ls`` (``neuron_devices``).

Status of a package:

- ``ok``: it imports.
- ``missing``: not installed (no distribution and ``ModuleNotFoundError`` for that very module), or
  installed only as an empty placeholder distribution with no module of that name (public
  registries hold such placeholders for the Neuron SDK; the real packages come from AWS's own
  index): a (re)install may help.
- ``broken``: present but its import raises (GLIBC, driver, a missing shared library or
  dependency): reinstalling the package will not fix it.

These three modules import only the standard library at import time, so the setup script can run
this one before anything else is installed.
"""

from __future__ import annotations

import argparse
import json
import platform as _platform
import sys
from dataclasses import asdict, dataclass, field

from pytest_autoport.neuron_devices import (  # noqa: F401  (re-exported: the checker's public names)
    DEV_GLOB_ENV,
    NEURON_LS_FALLBACK,
    neuron_core_count,
    neuron_device_paths,
    parse_neuron_ls,
)
from pytest_autoport.package_probe import (  # noqa: F401
    ALL_PACKAGES,
    CORE_PACKAGES,
    DEFAULT_REQUIRED,
    KNOWN_PACKAGES,
    NXDI_PACKAGES,
    PACKAGE_ALIASES,
    PackageStatus,
    check_packages,
    resolved_paths,
)

STAGES = ("env", "spec", "weights", "component", "model", "compile", "generate", "golden")
TARGETS = ("torch", "nxdi")
# the nxdi target's CPU-mode stages; generate[cpu] and golden[cpu] stand in for the device ones
NXDI_CPU_STAGES = ("generate[cpu]", "golden[cpu]", "sharding[tp=2]")
NXDI_CPU_FALLBACK_STAGES = ("generate[cpu]", "golden[cpu]")
DEVICE_RUNS_INSTEAD = "NeuronCores present: the device stage runs instead"


def target_stages(target: str) -> tuple[str, ...]:
    """The stages ``target`` plans, in order (nxdi adds its CPU-mode stages before ``compile``)."""
    if target != "nxdi":
        return STAGES
    at = STAGES.index("compile")
    return STAGES[:at] + NXDI_CPU_STAGES + STAGES[at:]


NO_CORES_REASON = "no NeuronCores on this machine (neuron-ls and /dev/neuron* found none)"

EXIT_READY, EXIT_MISSING, EXIT_BROKEN = 0, 1, 5


@dataclass
class EnvReport:
    python: str
    platform: str
    packages: dict[str, PackageStatus]
    neuron_devices: list[str]
    neuron_cores: int | None
    runnable_stages: dict[str, list[str]] = field(default_factory=dict)
    target: str = "torch"
    executable: str = ""
    neuron_ls: str | None = None  # the neuron-ls that was run, if any
    neuron_ls_error: str | None = None

    def __post_init__(self):
        if not self.runnable_stages:
            self.runnable_stages = {
                t: [s for s in target_stages(t) if self.unavailable_reason(t, s) is None] for t in TARGETS
            }

    # -- queries -----------------------------------------------------------------------------
    def package(self, name: str) -> PackageStatus:
        """Look a package up by import name, pip name or alias; unchecked ones read as missing."""
        key = PACKAGE_ALIASES.get(name, name)
        if key in self.packages:
            return self.packages[key]
        dist = KNOWN_PACKAGES.get(key, (name,))[0]
        return PackageStatus(key, "missing", error="not checked", distribution=dist)

    @property
    def has_neuron_cores(self) -> bool:
        return (self.neuron_cores or 0) > 0 or bool(self.neuron_devices)

    def unavailable_reason(self, target: str, stage: str) -> str | None:
        """None when ``stage`` can run on ``target`` here, else why not (the stage is skipped).

        ``stage`` may carry a parameter (``component[mlp]``); stages not in ``STAGES`` are held
        to the strictest requirements of their target."""
        if target == "nxdi" and stage in NXDI_CPU_STAGES:
            reason = self._first_not_importable("neuronx_distributed_inference", "transformers")
            if reason or stage not in NXDI_CPU_FALLBACK_STAGES:
                return reason
            return DEVICE_RUNS_INSTEAD if self.has_neuron_cores else None
        stage = stage.split("[", 1)[0]
        if stage in ("env", "spec", "hygiene"):
            return None if target in TARGETS else _unknown_target(target)
        if target == "torch":
            return self._first_not_importable("torch", "transformers")
        if target != "nxdi":
            return _unknown_target(target)
        if stage == "weights":
            return self._first_not_importable("transformers", "safetensors")
        reason = self._first_not_importable("neuronx_distributed_inference", "transformers")
        if reason or stage in ("component", "model"):
            return reason
        return None if self.has_neuron_cores else NO_CORES_REASON

    def _first_not_importable(self, *names: str) -> str | None:
        for name in names:
            pkg = self.package(name)
            if not pkg.ok:
                return f"{pkg.label} is not importable: {pkg.error}"
        return None

    # -- output ------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        data = asdict(self)
        data["has_neuron_cores"] = self.has_neuron_cores
        data["unavailable"] = {
            t: {s: r for s in target_stages(t) if (r := self.unavailable_reason(t, s)) is not None}
            for t in TARGETS
        }
        data["paths"] = resolved_paths()
        return data

    def summary_lines(self) -> list[str]:
        """Short lines for a pytest report header."""
        core = []
        for name in CORE_PACKAGES:
            pkg = self.package(name)
            if pkg.ok and name in ("torch", "transformers"):
                core.append(f"{pkg.label} {pkg.version}")
            elif not pkg.ok:
                core.append(pkg.describe())
        nxdi = self.package("neuronx_distributed_inference")
        parts = [nxdi.describe()]
        parts += [
            self.package(n).describe() for n in NXDI_PACKAGES if n != nxdi.name and not self.package(n).ok
        ]
        cc = self.packages.get("neuronxcc")
        if cc is not None and cc.ok:
            parts.append(cc.describe())
        lines = [
            f"autoport: python {self.python}, {', '.join(core)}; nxdi: {', '.join(parts)}; "
            f"NeuronCores: {self._cores_text()}"
        ]
        lines.append(f"autoport: target {self.target}: {self._stages_text(self.target)}")
        return lines

    def _cores_text(self) -> str:
        if self.neuron_cores:
            return str(self.neuron_cores)
        if self.neuron_devices:
            return f"{len(self.neuron_devices)} device(s) ({', '.join(self.neuron_devices)})"
        return "none"

    def _stages_text(self, target: str) -> str:
        if target not in TARGETS:
            return _unknown_target(target)
        runnable = [s for s in target_stages(target) if self.unavailable_reason(target, s) is None]
        if all(s in runnable for s in STAGES):
            return "all stages can run here"
        skipped: dict[str, list[str]] = {}
        for stage in target_stages(target):
            reason = self.unavailable_reason(target, stage)
            if reason is not None and reason != DEVICE_RUNS_INSTEAD:
                skipped.setdefault(reason, []).append(stage)
        text = f"can run {', '.join(runnable) or 'nothing'}"
        for reason, stages in skipped.items():
            text += f"; skips {', '.join(stages)}: {reason}"
        return text


def _unknown_target(target: str) -> str:
    return f"unknown target '{target}' (known: {', '.join(TARGETS)})"


# -- the report --------------------------------------------------------------------------------------
def check_environment(target: str = "torch", *, refresh: bool = False) -> EnvReport:
    """Check this machine: packages (in a child interpreter), NeuronCores and runnable stages.

    Package results are cached for the process (see ``check_packages``); ``refresh=True`` rechecks."""
    packages = check_packages(ALL_PACKAGES, refresh=refresh)
    cores, exe, error = neuron_core_count()
    return EnvReport(
        python=_platform.python_version(),
        platform=_platform.platform(),
        packages=packages,
        neuron_devices=neuron_device_paths(),
        neuron_cores=cores,
        target=target,
        executable=sys.executable,
        neuron_ls=exe,
        neuron_ls_error=error,
    )


# -- command line ----------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the full report as JSON")
    parser.add_argument(
        "--target",
        default="torch",
        choices=TARGETS,
        help="target whose runnable stages decide the exit status",
    )


def run(args: argparse.Namespace) -> int:
    """``autoport env``: exit 0 when every stage of ``--target`` can run here, else 1."""
    target = getattr(args, "target", "torch")
    report = check_environment(target)
    if getattr(args, "json", False):
        print(json.dumps(report.to_dict(), indent=2, sort_keys=True))
    else:
        print("\n".join(_human(report)))
    return 0 if all(s in report.runnable_stages[target] for s in STAGES) else 1


def _human(report: EnvReport) -> list[str]:
    lines = [f"python {report.python} ({report.executable}) on {report.platform}", "packages:"]
    for pkg in report.packages.values():
        detail = pkg.location if pkg.ok else pkg.error
        lines.append(f"  {pkg.status:<8} {pkg.label:<32} {pkg.version or '':<18} {detail or ''}".rstrip())
    where = f" (neuron-ls: {report.neuron_ls})" if report.neuron_ls else ""
    note = f"; {report.neuron_ls_error}" if report.neuron_ls_error else ""
    devices = ", ".join(report.neuron_devices) or "no /dev/neuron*"
    lines.append(f"NeuronCores: {report._cores_text()}{where}; devices: {devices}{note}")
    lines.append("targets:")
    for target in TARGETS:
        lines.append(f"  {target}: {report._stages_text(target)}")
    return lines


def check_env(require=DEFAULT_REQUIRED, *, stream=None) -> int:
    """The setup script's validation step: every required package must import.

    Prints one line per package and the three ``RESOLVED:NAME=path`` lines; returns 0 when all
    import, 5 when some are installed but fail at import (reinstalling will not fix that), else 1
    (some are missing: an install may help)."""
    stream = stream or sys.stdout
    packages = check_packages(list(require))

    def out(text=""):
        print(text, file=stream, flush=True)

    out(f"check-env: python {_platform.python_version()} ({sys.executable})")
    for pkg in packages.values():
        if pkg.ok:
            out(f"  OK       {pkg.label} {pkg.version or ''} {pkg.location or ''}".rstrip())
        elif pkg.status == "missing":
            out(f"  MISSING  {pkg.label}: {pkg.error}")
        else:
            out(f"  BROKEN   {pkg.label}: {pkg.error}")
    for name, path in resolved_paths().items():
        out(f"RESOLVED:{name}={path}")
    broken = [p.label for p in packages.values() if p.status == "broken"]
    missing = [p.label for p in packages.values() if p.status == "missing"]
    if broken:
        out(
            f"check-env: installed but failing at import: {', '.join(broken)} "
            "(a system-level problem such as GLIBC or the Neuron driver; reinstalling will not fix it)"
        )
        return EXIT_BROKEN
    if missing:
        out(f"check-env: missing: {', '.join(missing)} (an install may fix this)")
        return EXIT_MISSING
    out("check-env: all required packages import")
    return EXIT_READY


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pytest_autoport.envcheck", description=__doc__.split("\n")[0]
    )
    add_arguments(parser)
    parser.add_argument(
        "--check-env",
        action="store_true",
        help="validate the required packages and print RESOLVED:NAME=path lines (exit 0 ready, 1 missing, 5 broken)",
    )
    parser.add_argument(
        "--require",
        action="append",
        metavar="NAMES",
        help=f"comma-separated packages --check-env requires (default: {','.join(DEFAULT_REQUIRED)})",
    )
    args = parser.parse_args(argv)
    if args.check_env:
        names = [n.strip() for item in args.require or [] for n in item.split(",") if n.strip()]
        return check_env(names or DEFAULT_REQUIRED)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
