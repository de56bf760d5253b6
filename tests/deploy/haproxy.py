"""HAProxy as a child process for tests: the shipped config rendered, run in the foreground."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from deploy.haproxy.render import render


def haproxy_binary() -> str:
    """The haproxy executable; fail (never skip) when it is missing."""
    path = shutil.which("haproxy")
    if path is None:
        pytest.fail(
            "haproxy is not installed: `apt-get install haproxy` (.ci/run installs it in CI)"
        )
    return path


def check_config(config: Path, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
    """``haproxy -c -f config``: HAProxy's own verdict on a config file."""
    return subprocess.run(
        [haproxy_binary(), "-c", "-f", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )


class Haproxy:
    """``haproxy -db`` on the shipped config pointed at ``replicas``; every log line kept."""

    def __init__(self, replicas: Sequence[str], address: str, folder: Path) -> None:
        self.address = address
        self.config = folder / "haproxy.cfg"
        self.config.write_text(render(replicas, address))
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.proc = subprocess.Popen(
            [haproxy_binary(), "-db", "-f", str(self.config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._wait_listening()

    def _wait_listening(self, timeout: float = 30.0) -> None:
        host, port = self.address.rsplit(":", 1)
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            try:
                socket.create_connection((host, int(port)), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise AssertionError("haproxy did not listen:\n" + "\n".join(self.lines[-20:]))

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for_line(self, pattern: str, timeout: float = 30.0) -> str:
        """The first log line matching ``pattern``, waiting up to ``timeout`` seconds for it."""
        regex = re.compile(pattern)

        def found() -> str | None:
            return next((line for line in self.lines if regex.search(line)), None)

        with self._changed:
            self._changed.wait_for(
                lambda: found() is not None or self.proc.poll() is not None, timeout
            )
            line = found()
        if line is None:
            log = "\n".join(self.lines[-20:])
            raise AssertionError(f"no log line matching {pattern!r}; haproxy said:\n{log}")
        return line

    def stop(self) -> None:
        """Stop HAProxy (by its pid) and wait for it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._reader.join(timeout=10)
        if self.proc.stdout:
            self.proc.stdout.close()
