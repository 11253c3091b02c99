"""Environment checker: which packages import here, whether NeuronCores exist, which stages can run.

One checker serves three callers: the ``env`` stage and the pytest report header
(``check_environment()``), the ``autoport env`` command (``add_arguments`` / ``run``), and the setup
script's validation step (``python -m pytest_autoport.envcheck --check-env``, the equivalent of
Autoport's ``check_env.py``).

Every package is imported in a child interpreter, never in the caller: an import that dies of a
GLIBC mismatch, a driver error or a segfault is then reported as "broken" instead of taking the
test session down with it. All packages are checked in one child (a new one only after a crash or a
timeout), so the whole check costs about one ``import torch, transformers``.

Status of a package:

- ``ok``: it imports.
- ``missing``: not installed (no distribution and ``ModuleNotFoundError`` for that very module), or
  installed only as an empty placeholder distribution with no module of that name (public
  registries hold such placeholders for the Neuron SDK; the real packages come from AWS's own
  index): a (re)install may help.
- ``broken``: present but its import raises (GLIBC, driver, a missing shared library or
  dependency): reinstalling the package will not fix it.

This module imports only the standard library at import time, and has no relative imports, so the
setup script can run it from a source checkout before anything is installed.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import platform as _platform
import shutil
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass, field

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


# key (import name) -> (distribution name, group, extra modules imported when present)
KNOWN_PACKAGES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "torch": ("torch", "core", ()),
    "transformers": ("transformers", "core", ()),
    "safetensors": ("safetensors", "core", ()),
    "tokenizers": ("tokenizers", "core", ()),
    "torch_neuronx": ("torch-neuronx", "nxdi", ()),
    "neuronx_distributed": ("neuronx-distributed", "nxdi", ()),
    # The top-level package may import without the SDK; its config module needs torch_neuronx.
    "neuronx_distributed_inference": (
        "neuronx-distributed-inference",
        "nxdi",
        ("neuronx_distributed_inference.models.config",),
    ),
    "neuronxcc": ("neuronx-cc", "compiler", ()),
}
CORE_PACKAGES = ("torch", "transformers", "safetensors", "tokenizers")
NXDI_PACKAGES = ("torch_neuronx", "neuronx_distributed", "neuronx_distributed_inference")
ALL_PACKAGES = CORE_PACKAGES + NXDI_PACKAGES + ("neuronxcc",)
DEFAULT_REQUIRED = NXDI_PACKAGES + ("transformers", "torch")
_ALIASES = {"nxdi": "neuronx_distributed_inference", "nxd": "neuronx_distributed", "neuronx_cc": "neuronxcc"}
_ALIASES.update({dist: key for key, (dist, _, _) in KNOWN_PACKAGES.items()})

NEURON_SDK_INDEX = "https://pip.repos.neuron.amazonaws.com"
NO_CORES_REASON = "no NeuronCores on this machine (neuron-ls and /dev/neuron* found none)"
# Overridable so tests (and odd containers) can point the device scan elsewhere.
DEV_GLOB_ENV = "AUTOPORT_NEURON_DEV_GLOB"
TIMEOUT_ENV = "AUTOPORT_ENVCHECK_TIMEOUT"
NEURON_LS_FALLBACK = "/opt/aws/neuron/bin/neuron-ls"

EXIT_READY, EXIT_MISSING, EXIT_BROKEN = 0, 1, 5

_MARK = "@@autoport-envcheck@@ "
# Runs in the child interpreter: one "start" line before each import, one "result" line after, so
# a crash still tells the parent which package was being imported.
_CHILD = r"""
import importlib, importlib.util, json, os, sys
try:
    import importlib.metadata as md
except ImportError:
    md = None
MARK = "@@autoport-envcheck@@ "
def emit(kind, payload):
    sys.stdout.write(MARK + json.dumps([kind, payload]) + "\n")
    sys.stdout.flush()
def line(e):
    text = " ".join(str(e).split())
    return type(e).__name__ + (": " + text if text else "")
for key, module, dist, probes in json.loads(sys.argv[1]):
    emit("start", key)
    r = {"key": key, "outcome": None, "version": None, "location": None, "error": None,
         "dist_version": None, "missing_name": None}
    if md is not None:
        try:
            r["dist_version"] = md.version(dist)
        except Exception:
            pass
    try:
        mod = importlib.import_module(module)
        for probe in probes:
            try:
                found = importlib.util.find_spec(probe) is not None
            except Exception:
                found = False
            if found:
                importlib.import_module(probe)
    except ModuleNotFoundError as e:
        r["outcome"], r["error"], r["missing_name"] = "not_found", line(e), e.name
    except BaseException as e:
        r["outcome"], r["error"] = "raised", line(e)
    else:
        r["outcome"] = "ok"
        r["version"] = r["dist_version"] or getattr(mod, "__version__", None)
        if isinstance(r["version"], (tuple, list)):
            r["version"] = ".".join(map(str, r["version"]))
        elif r["version"] is not None:
            r["version"] = str(r["version"])
        path = list(getattr(mod, "__path__", []) or [])
        f = getattr(mod, "__file__", None)
        r["location"] = str(path[0]) if path else (os.path.dirname(f) if f else None)
    emit("result", r)
"""


@dataclass
class PackageStatus:
    """One package as seen from a fresh interpreter. ``name`` is the import name."""

    name: str
    status: str  # "ok" | "missing" | "broken"
    version: str | None = None
    location: str | None = None
    error: str | None = None
    distribution: str | None = None  # the pip name, e.g. "neuronx-distributed-inference"

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def label(self) -> str:
        return self.distribution or self.name

    def describe(self) -> str:
        """``torch 2.13.0`` / ``torch-neuronx missing`` / ``torch broken (ImportError: ...)``."""
        if self.ok:
            return f"{self.label} {self.version or '(no version)'}"
        if self.status == "missing" and self.error and "placeholder" in self.error:
            return f"{self.label} missing (placeholder {self.version} installed, no module)"
        if self.status == "missing":
            return f"{self.label} missing"
        return f"{self.label} broken ({self.error})"


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
        key = _ALIASES.get(name, name)
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


# -- package checks ------------------------------------------------------------------------------
def _spec_for(name: str) -> tuple[str, str, str, list[str]]:
    key = _ALIASES.get(name, name)
    if key in KNOWN_PACKAGES:
        dist, _, probes = KNOWN_PACKAGES[key]
        return key, key, dist, list(probes)
    return key, key.replace("-", "_"), key, []


_CACHE: dict[tuple, dict[str, PackageStatus]] = {}


def check_packages(
    names=ALL_PACKAGES, *, python: str | None = None, timeout: float | None = None, refresh: bool = False
) -> dict[str, PackageStatus]:
    """Import each package in a child interpreter; returns import name -> status.

    ``names`` are import names, pip names or aliases ("nxdi"). A crash or a timeout marks the
    package being imported as broken and the rest are checked in a new child. Results are cached
    per interpreter, PATH, PYTHONPATH and working directory; ``refresh=True`` checks again."""
    specs = [_spec_for(n) for n in names]
    python = python or sys.executable
    if timeout is None:
        timeout = float(os.environ.get(TIMEOUT_ENV, "120"))
    cache_key = (
        python,
        tuple(s[0] for s in specs),
        os.environ.get("PYTHONPATH", ""),
        os.environ.get("PATH", ""),
        os.getcwd(),
    )
    if not refresh and cache_key in _CACHE:
        return dict(_CACHE[cache_key])
    results: dict[str, PackageStatus] = {}
    pending = specs
    while pending:
        raw, current, failure = _run_child(python, pending, timeout)
        for spec in pending:
            if spec[0] in raw:
                results[spec[0]] = _classify(spec, raw[spec[0]])
        if current is not None and current not in results:
            spec = next(s for s in pending if s[0] == current)
            results[current] = PackageStatus(current, "broken", error=failure, distribution=spec[2])
        left = [s for s in pending if s[0] not in results]
        if len(left) == len(pending):  # no progress: the child could not even start
            for spec in left:
                results[spec[0]] = PackageStatus(spec[0], "broken", error=failure, distribution=spec[2])
            left = []
        pending = left
    ordered = {s[0]: results[s[0]] for s in specs}
    _CACHE[cache_key] = ordered
    return dict(ordered)


def _run_child(python, specs, timeout) -> tuple[dict[str, dict], str | None, str]:
    """Run the child on ``specs``: (results by key, key being imported when it stopped, why)."""
    argv = [python, "-c", _CHILD, json.dumps(specs)]
    try:
        proc = subprocess.run(argv, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
        out, err, rc, why = proc.stdout, proc.stderr, proc.returncode, None
    except subprocess.TimeoutExpired as e:
        out, err, rc = e.stdout or b"", e.stderr or b"", None
        why = f"import did not finish within {timeout:g} s (hung?)"
    except OSError as e:
        return {}, None, f"could not run {python}: {e}"
    out = out.decode("utf-8", "replace") if isinstance(out, bytes) else out
    err = err.decode("utf-8", "replace") if isinstance(err, bytes) else err
    raw: dict[str, dict] = {}
    current = None
    for text in out.splitlines():
        if not text.startswith(_MARK):
            continue
        try:
            kind, payload = json.loads(text[len(_MARK) :])
        except ValueError:
            continue
        if kind == "start":
            current = payload
        elif kind == "result":
            raw[payload["key"]] = payload
            current = None
    if why is None:
        if rc is not None and rc < 0:
            try:
                name = signal.Signals(-rc).name
            except ValueError:
                name = f"signal {-rc}"
            why = f"import crashed the interpreter ({name})"
        else:
            why = f"the checking interpreter exited with status {rc}"
    tail = [t.strip() for t in err.splitlines() if t.strip()]
    if tail:
        why += f": {tail[-1][:500]}"
    return raw, current, why


def _classify(spec, raw: dict) -> PackageStatus:
    key, module, dist, _ = spec
    if raw["outcome"] == "ok":
        return PackageStatus(key, "ok", raw["version"], raw["location"], None, dist)
    if raw["outcome"] == "not_found" and raw["missing_name"] == module:
        if raw["dist_version"] is None:
            return PackageStatus(key, "missing", None, None, raw["error"], dist)
        error = f"distribution {dist} {raw['dist_version']} is installed but provides no module '{module}'"
        if key in KNOWN_PACKAGES:
            error += (
                f" (a placeholder from a public registry? the real package comes from {NEURON_SDK_INDEX})"
            )
        # A placeholder counts as missing, not broken: installing the real package fixes it.
        return PackageStatus(key, "missing", raw["dist_version"], None, error, dist)
    return PackageStatus(key, "broken", raw["dist_version"], None, raw["error"], dist)


# -- NeuronCores -----------------------------------------------------------------------------------
def neuron_device_paths() -> list[str]:
    return sorted(glob.glob(os.environ.get(DEV_GLOB_ENV, "/dev/neuron*")))


def neuron_core_count(timeout: float = 20.0) -> tuple[int | None, str | None, str | None]:
    """(cores, neuron-ls path, error) from ``neuron-ls --json-output``; cores None when unknown."""
    exe = shutil.which("neuron-ls")
    if exe is None and os.access(NEURON_LS_FALLBACK, os.X_OK):
        exe = NEURON_LS_FALLBACK
    if exe is None:
        return None, None, "neuron-ls not found"
    try:
        proc = subprocess.run(
            [exe, "--json-output"], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, exe, f"neuron-ls failed: {e}"
    if proc.returncode != 0 and not proc.stdout.strip():
        last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        # A host without the driver answers "failed to discover Neuron devices" and exit 1.
        return 0 if "discover" in last.lower() else None, exe, f"neuron-ls: {last}"
    try:
        return parse_neuron_ls(proc.stdout), exe, None
    except (ValueError, TypeError) as e:
        return None, exe, f"cannot read neuron-ls output: {e}"


def parse_neuron_ls(text: str) -> int:
    """Total NeuronCores in ``neuron-ls --json-output``: a list of devices with ``nc_count``
    (newer tools may wrap the list as ``{"neuron_devices": [...]}``)."""
    data = json.loads(text) if text.strip() else []
    if isinstance(data, dict):
        data = data.get("neuron_devices", data.get("devices", []))
    if not isinstance(data, list):
        raise ValueError("expected a list of devices")
    total = 0
    for device in data:
        if not isinstance(device, dict):
            raise ValueError("expected device objects")
        if "nc_count" in device:
            total += int(device["nc_count"])
        elif isinstance(device.get("neuroncore_ids"), list):
            total += len(device["neuroncore_ids"])
    return total


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


def _package_dir(module: str) -> str:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return ""
    if spec is None:
        return ""
    locations = list(spec.submodule_search_locations or [])
    if locations:
        return str(locations[0])  # some packages (transformers) put Path objects in __path__
    return os.path.dirname(spec.origin) if spec.origin and spec.origin != "built-in" else ""


def resolved_paths() -> dict[str, str]:
    """Source folders the port workflow reads: NXDI_SRC, NXD_SRC, TRANSFORMERS_SRC ("" when not found).

    Found with ``importlib.util.find_spec``, which locates a top-level package without running it."""
    return {
        "NXDI_SRC": _package_dir("neuronx_distributed_inference"),
        "NXD_SRC": _package_dir("neuronx_distributed"),
        "TRANSFORMERS_SRC": _package_dir("transformers"),
    }


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
