"""NxDI in CPU mode at tensor parallelism > 1: one process per rank (torch.distributed, gloo).

``run_sharded`` starts the ranks (free port, a timeout instead of a hang when a rank dies, every
rank killed on any exit); each rank builds the application with ``to_cpu()`` at that tp degree, runs
one context-encoding pass over the probe with hooks on the spec's modules, and rank 0 saves the
outputs and the logits at every position. NxD's real parallel layers (column / row parallel
linears, KV-head replication, vocabulary-sharded embedding) run in the process.

Run as ``python -m pytest_autoport.targets.nxdi.sharding REQUEST.pt`` by ``run_sharded`` only.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ...errors import StageFailure
from . import free_port
from .outputs import context_encoding_logits, first_tensor

POLL_S = 0.2


def run_sharded(spec, input_ids: torch.Tensor, module_paths: list[str], tp: int, timeout_s: float) -> dict:
    """{"logits": [b, s, vocab], "modules": {path: output}} from rank 0 of a ``tp``-process run."""
    with tempfile.TemporaryDirectory(prefix="autoport-nxdi-tp-") as tmp:
        request = Path(tmp) / "request.pt"
        result = Path(tmp) / "result.pt"
        torch.save(
            {
                "spec_path": str(spec.path),
                "project_root": str(spec.project_root),
                "weights": str(spec.weights_dir),
                "input_ids": input_ids,
                "paths": list(module_paths),
                "tp": tp,
                "result": str(result),
            },
            request,
        )
        package_root = str(Path(__file__).resolve().parents[3])
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE=str(tp))
        env["LOCAL_WORLD_SIZE"] = str(tp)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        logs = [Path(tmp) / f"rank{r}.log" for r in range(tp)]
        procs = []
        try:
            for rank in range(tp):
                log = logs[rank].open("w")
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", __name__, str(request)],
                        env=dict(env, RANK=str(rank), LOCAL_RANK=str(rank)),
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
                log.close()
            _wait(procs, logs, timeout_s)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        return torch.load(result)


def _wait(procs, logs, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        codes = [p.poll() for p in procs]
        failed = [r for r, c in enumerate(codes) if c not in (None, 0)]
        if failed:
            rank = failed[0]
            raise StageFailure(
                f"nxdi: tp rank {rank} exited with code {codes[rank]}; the other ranks were stopped\n"
                + _tail(logs[rank])
            )
        if all(c == 0 for c in codes):
            return
        if time.monotonic() > deadline:
            raise StageFailure(
                f"nxdi: the tp={len(procs)} run did not finish within {timeout_s:.0f} s; every rank was stopped\n"
                + _tail(logs[0])
            )
        time.sleep(POLL_S)


def _tail(log: Path, lines: int = 15) -> str:
    try:
        text = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + line for line in text[-lines:])


@torch.inference_mode()
def _rank_main(request_path: str) -> None:
    from ...spec import load_spec
    from . import build_cpu_app
    from .runtime import release_process_group

    request = torch.load(request_path)
    spec = load_spec(Path(request["spec_path"]), Path(request["project_root"]), check_imports=False)
    spec = dataclasses.replace(spec, model=dataclasses.replace(spec.model, weights_path=request["weights"]))
    app = build_cpu_app(spec, torch.float32, request["tp"])
    model = app.context_encoding_model.model
    outputs: dict[str, torch.Tensor] = {}
    handles = []
    for path in request["paths"]:

        def hook(module, args, output, path=path):
            tensor = first_tensor(output)
            if path not in outputs and tensor is not None:
                outputs[path] = tensor.detach().clone()

        handles.append(model.get_submodule(path).register_forward_hook(hook))
    try:
        logits = context_encoding_logits(app, model, request["input_ids"])
    finally:
        for handle in handles:
            handle.remove()
    logits = logits[..., : app.config.vocab_size]
    if torch.distributed.get_rank() == 0:
        torch.save({"logits": logits, "modules": outputs}, request["result"])
    release_process_group()


if __name__ == "__main__":
    _rank_main(sys.argv[1])
