"""NeuronCores on this machine: ``/dev/neuron*`` and ``neuron-ls --json-output``.

Imports only the standard library (the setup script runs it before anything is installed)."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess

# Overridable so tests (and odd containers) can point the device scan elsewhere.
DEV_GLOB_ENV = "AUTOPORT_NEURON_DEV_GLOB"
NEURON_LS_FALLBACK = "/opt/aws/neuron/bin/neuron-ls"


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
