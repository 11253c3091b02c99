"""Issue 17 item 2 (part): a results file is never left empty or half-written, whatever kills the run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from pytest_autoport.results import write_atomic

REPO = Path(__file__).resolve().parents[1]

# rewrites one results file over and over, each version a complete ~2 MB JSON document
WRITER = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from pytest_autoport.results import write_atomic

    path = Path(sys.argv[1])
    for n in range(10**6):
        write_atomic(path, json.dumps({"n": n, "stages": ["x" * 1000] * 2000}))
        if n == 0:
            print("written", flush=True)
    """
)


def test_results_writer_killed_mid_write_leaves_a_complete_file(tmp_path):
    path = tmp_path / "results" / "llama.json"
    write_atomic(path, json.dumps({"n": -1}))  # the previous verdict
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    for delay in (0.05, 0.2, 0.35):
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True, env=env
        )
        try:
            assert writer.stdout.readline().strip() == "written"
            time.sleep(delay)
        finally:
            writer.send_signal(signal.SIGKILL)
            writer.wait()
        data = json.loads(path.read_text())  # complete: never empty, never cut short
        assert isinstance(data["n"], int)
    # the killed writers' temporary files are gone after the next write
    write_atomic(path, json.dumps({"n": "next"}))
    assert sorted(p.name for p in path.parent.iterdir()) == ["llama.json"]


def test_a_temporary_file_of_a_live_writer_is_left_alone(tmp_path):
    import socket

    path = tmp_path / "llama.json"
    live = tmp_path / f".llama.json.{socket.gethostname()}.{os.getpid()}.abc"
    live.write_text("{")
    write_atomic(path, "{}")
    assert live.exists() and path.read_text() == "{}"
