"""Which packages import here. A package this process has imported already is reported as it is; one
that no folder on the path holds is missing; every other one is imported in a child interpreter, never
in the caller: an import that dies of a GLIBC mismatch, a driver error or a segfault is then reported as
"broken" instead of taking the test session down with it. All of those are checked in one child (a new
one only after a crash or a timeout). Inside a verdict, where torch and transformers are imported
already and the Neuron packages are absent, the check starts no child at all.

Imports only the standard library (the setup script runs it before anything is installed).
"""

from __future__ import annotations

import importlib.machinery
import importlib.metadata
import importlib.util
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass

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
PACKAGE_ALIASES = {
    "nxdi": "neuronx_distributed_inference",
    "nxd": "neuronx_distributed",
    "neuronx_cc": "neuronxcc",
}
PACKAGE_ALIASES.update({dist: key for key, (dist, _, _) in KNOWN_PACKAGES.items()})

NEURON_SDK_INDEX = "https://pip.repos.neuron.amazonaws.com"
TIMEOUT_ENV = "AUTOPORT_ENVCHECK_TIMEOUT"

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


def _spec_for(name: str) -> tuple[str, str, str, list[str]]:
    key = PACKAGE_ALIASES.get(name, name)
    if key in KNOWN_PACKAGES:
        dist, _, probes = KNOWN_PACKAGES[key]
        return key, key, dist, list(probes)
    return key, key.replace("-", "_"), key, []


_CACHE: dict[tuple, dict[str, PackageStatus]] = {}


def _cache_key(names, python: str | None = None) -> tuple:
    """What a check's result depends on: interpreter, packages, PATH, PYTHONPATH, working directory."""
    return (
        python or sys.executable,
        tuple(_spec_for(n)[0] for n in names),
        os.environ.get("PYTHONPATH", ""),
        os.environ.get("PATH", ""),
        os.getcwd(),
    )


def remember_packages(names, statuses: dict[str, PackageStatus]) -> None:
    """Take a check this process's parent made, in the same environment, as this process's own (a test
    harness forking many runs from one process checks once)."""
    _CACHE[_cache_key(names)] = dict(statuses)


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
    cache_key = _cache_key(names, python)
    if not refresh and cache_key in _CACHE:
        return dict(_CACHE[cache_key])
    results: dict[str, PackageStatus] = {}
    if python == sys.executable:
        for spec in specs:
            raw = _already_imported(spec) or _absent(spec)
            if raw is not None:
                results[spec[0]] = _classify(spec, raw)
    pending = [s for s in specs if s[0] not in results]
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


def _child_path() -> list[str]:
    """Where a new interpreter (``-c``) would look for a top-level module: the working directory, its
    PYTHONPATH as set now, and this interpreter's own path."""
    extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return [os.getcwd(), *extra, *sys.path]


def _raw_result(key: str, dist: str, outcome: str, **found) -> dict:
    """A result in the child's form, for a package judged without a child."""
    try:
        found_dists = importlib.metadata.Distribution.discover(name=dist, path=_child_path())
        dist_version = next(iter(found_dists)).version
    except Exception:
        dist_version = None
    raw = {"key": key, "outcome": outcome, "version": None, "location": None, "error": None}
    return {**raw, "dist_version": dist_version, "missing_name": None, **found}


def _already_imported(spec) -> dict | None:
    """A package this interpreter imported already (probes included) imports here: no child needed."""
    key, module, dist, probes = spec
    mod = sys.modules.get(module)
    if mod is None or any(probe not in sys.modules for probe in probes):
        return None
    raw = _raw_result(key, dist, "ok")
    version = raw["dist_version"] or getattr(mod, "__version__", None)
    if isinstance(version, (tuple, list)):
        version = ".".join(map(str, version))
    path = list(getattr(mod, "__path__", []) or [])
    file = getattr(mod, "__file__", None)
    location = str(path[0]) if path else (os.path.dirname(file) if file else None)
    return {**raw, "version": None if version is None else str(version), "location": location}


def _absent(spec) -> dict | None:
    """A top-level module that no folder a new interpreter would search holds (nor a finder of this
    one knows) cannot import: no child needed."""
    key, module, dist, _ = spec
    if "." in module:
        return None
    try:
        found = importlib.machinery.PathFinder.find_spec(module, _child_path())
    except (ImportError, ValueError):
        return None
    if found is not None or importlib.util.find_spec(module) is not None:
        return None
    return _raw_result(
        key, dist, "not_found", error=f"ModuleNotFoundError: No module named '{module}'", missing_name=module
    )


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
