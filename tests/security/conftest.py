"""Fixtures for the security tests: certificates, token files and server processes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.security.certs import make_ca, make_signed

REPO = Path(__file__).resolve().parents[2]
ALICE_TOKEN = "alice-token-0123456789abcdef"
BOB_TOKEN = "bob-token-fedcba9876543210xyz"


class Pki:
    """A CA with a server and a client (alice) certificate, and an unrelated CA with its own."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ca = make_ca(folder, "ca")
        self.server = make_signed(self.ca, folder, "server", "localhost", server=True)
        self.alice = make_signed(self.ca, folder, "alice", "alice")
        self.other_ca = make_ca(folder, "other-ca")
        self.other_server = make_signed(
            self.other_ca, folder, "other-server", "localhost", server=True
        )
        self.mallory = make_signed(self.other_ca, folder, "mallory", "alice")


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def write_tokens(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


class ServerProcess:
    """``rnnstream serve`` on 127.0.0.1 with its whole stderr in a file."""

    def __init__(self, models: Path, folder: Path, *flags: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.log_path = folder / "server.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("RNNSTREAM_")}
        command = [sys.executable, "-m", "rnnstream.cli", "serve", "--models", str(models)]
        command += ["--host", "127.0.0.1", "--port", "0", "--state-dir", "", "--grace-s", "1"]
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen([*command, *flags], cwd=REPO, env=env, stderr=log)
        self.address = ""

    def wait_serving(self) -> ServerProcess:
        try:
            match = self.wait_for(r"serving .* on (127\.0\.0\.1:\d+)")
        except AssertionError:
            self.stop()
            raise
        self.address = match.group(1)
        return self

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 60) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            matches = list(re.finditer(pattern, self.log()))
            if len(matches) >= count:
                return matches[count - 1]
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} in the server's log:\n{self.log()}")

    def reload(self) -> None:
        """SIGHUP, and wait until the server says it reloaded."""
        done = self.log().count("reloaded credentials")
        self.proc.send_signal(signal.SIGHUP)
        self.wait_for("reloaded credentials", count=done + 1)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait(timeout=30)


@pytest.fixture
def start_server(tiny_models: Path, tmp_path: Path) -> Iterator[object]:
    """``start_server(*flags)``: a server process, stopped at the end of the test."""
    started: list[ServerProcess] = []

    def start(*flags: str, wait: bool = True) -> ServerProcess:
        server = ServerProcess(tiny_models, tmp_path / f"server{len(started)}", *flags)
        started.append(server)
        return server.wait_serving() if wait else server

    yield start
    for server in started:
        server.stop()
