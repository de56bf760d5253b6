"""`rnnstream serve` as a child process on 127.0.0.1 and a free port, for tests."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def start_process(
    models: Path, state: Path | str, *extra: str
) -> tuple[subprocess.Popen[str], str]:
    """Start the server; return it and the address it reports once serving."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RNNSTREAM_")}
    command = [sys.executable, "-m", "rnnstream.cli", "serve", "--models", str(models)]
    command += ["--host", "127.0.0.1", "--port", "0", "--state-dir", str(state), *extra]
    proc = subprocess.Popen(command, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        match = re.search(r"serving .* on (127\.0\.0\.1:\d+)", line)
        if match:
            return proc, match.group(1)
        if not line:
            break
    proc.kill()
    proc.wait(timeout=30)
    raise AssertionError("server did not start")


def stop_process(proc: subprocess.Popen[str], sig: int) -> int:
    """Send ``sig``, wait for the exit code, close the pipe."""
    proc.send_signal(sig)
    try:
        return proc.wait(timeout=30)
    finally:
        if proc.stderr:
            proc.stderr.close()
