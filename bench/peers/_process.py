"""What both peers' ``serve.py`` do around their server process.

A free port, a bounded wait until it is ready, and running it until SIGTERM/SIGINT.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(
    name: str, process: subprocess.Popen[bytes], probe: Callable[[], bool], timeout_s: float
) -> None:
    """Call ``probe`` every 0.5 s until it says ready; exit if the process dies or time is up."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{name} exited with {process.returncode}")
        if probe():
            return
        time.sleep(0.5)
    raise SystemExit(f"{name} not ready after {timeout_s:g}s")


def run_until_signal(
    name: str, process: subprocess.Popen[bytes], address: str, wait: Callable[[], None]
) -> int:
    """Wait for readiness, announce, serve until SIGTERM or SIGINT, then stop the process.

    ``wait`` blocks until ready; the announcement is the line the harness waits for;
    stopping terminates the process and kills it if it lingers. Returns 0 if stopped by a
    signal, 1 if the process ended by itself.
    """
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        wait()
        print(f"serving {name} on {address} (pid {process.pid})", file=sys.stderr, flush=True)
        while not stopping and process.poll() is None:
            time.sleep(0.2)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
    return 0 if stopping else 1
