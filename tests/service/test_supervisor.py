"""``rnnstream serve --workers N``: the supervisor and its worker processes, for real."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rnnstream.server.settings import Settings
from rnnstream.server.supervisor import settings_environment, worker_count
from rnnstream.v1 import rnnstream_pb2 as pb
from rnnstream.v1 import rnnstream_pb2_grpc as pb_grpc
from tests.conftest import free_port
from tests.service.processes import REPO


def test_worker_count_takes_numbers_and_auto() -> None:
    assert worker_count("3") == 3
    assert worker_count("auto") >= 1
    for bad in ("0", "-1", "two", ""):
        with pytest.raises(ValueError, match="--workers"):
            worker_count(bad)


def test_settings_refuse_a_bad_worker_count() -> None:
    with pytest.raises(ValueError, match="workers is '0'"):
        Settings.from_env({}, workers="0")


def test_a_worker_is_started_with_exactly_the_supervisors_settings(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {}, models=tmp_path, port=1234, state_dir="", idle_ttl_s=12.5, workers="4"
    )
    assert Settings.from_env(settings_environment(settings)) == settings


class Supervised:
    """A supervisor process whose log lines are read on a thread (so no pipe fills up)."""

    def __init__(self, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RNNSTREAM_")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rnnstream.cli", "serve", *args],
            cwd=REPO,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line)

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 60) -> list[re.Match[str]]:
        """The first ``count`` log lines matching ``pattern`` (including ones already seen)."""
        deadline = time.monotonic() + timeout
        while True:
            found = [m for m in (re.search(pattern, line) for line in self.seen) if m]
            if len(found) >= count:
                return found[:count]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {count} x {pattern!r} in:\n" + "".join(self.seen))
            try:
                self.seen.append(self.lines.get(timeout=remaining))
            except queue.Empty:
                continue

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
            raise
        finally:
            self.reader.join(timeout=10)  # EOF once the process and its workers are gone
            if self.proc.stderr is not None and not self.reader.is_alive():
                self.proc.stderr.close()


@pytest.fixture
def two_workers(tiny_models: Path) -> Iterator[tuple[Supervised, int, int]]:
    port, metrics_port = free_port(), free_port()
    supervised = Supervised(
        "--models",
        str(tiny_models),
        "--default-model",
        "tiny",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--metrics-port",
        str(metrics_port),
        "--state-dir",
        "",
        "--workers",
        "2",
        "--grace-s",
        "2",
    )
    try:
        yield supervised, port, metrics_port
    finally:
        supervised.stop(signal.SIGKILL)


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        return str(answer.read().decode())


def _serving(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        check = health_pb2_grpc.HealthStub(channel).Check
        answer = check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


@pytest.mark.slow
def test_workers_share_the_port_restart_after_a_crash_and_drain(
    two_workers: tuple[Supervised, int, int],
) -> None:
    supervised, port, metrics_port = two_workers
    (started,) = supervised.wait_for(
        r"supervising 2 workers on 127\.0\.0\.1:\d+ \(pids (\d+), (\d+)\)"
    )
    pids = [int(started.group(1)), int(started.group(2))]
    supervised.wait_for(rf"serving .* on 127\.0\.0\.1:{port}", count=2)
    # New connections spread over both workers (the kernel hashes each connection).
    for _ in range(8):
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            answer = pb_grpc.PredictorStub(channel).ListModels(pb.ListModelsRequest(), timeout=10)
            assert answer.default_model == "tiny"
    text = _metrics(metrics_port)
    assert 'worker="1"' in text and 'worker="2"' in text
    assert 'rnnstream_workers{state="running"} 2.0' in text

    os.kill(pids[0], signal.SIGKILL)
    supervised.wait_for(r"worker 1 \(pid \d+\) exited with signal SIGKILL")
    (restarted,) = supervised.wait_for(r"worker 1 restarted \(pid (\d+)\)")
    assert int(restarted.group(1)) not in pids
    supervised.wait_for(rf"serving .* on 127\.0\.0\.1:{port}", count=3)
    assert _serving(port)
    assert "rnnstream_worker_restarts_total 1.0" in _metrics(metrics_port)

    assert supervised.stop(signal.SIGTERM) == 0
    supervised.wait_for(r"supervisor: stopped")


@pytest.mark.slow
def test_workers_drain_when_the_supervisor_is_killed(
    two_workers: tuple[Supervised, int, int],
) -> None:
    supervised, port, _ = two_workers
    (started,) = supervised.wait_for(r"supervising 2 workers .* \(pids (\d+), (\d+)\)")
    supervised.wait_for(rf"serving .* on 127\.0\.0\.1:{port}", count=2)
    supervised.proc.kill()
    for pid in (int(started.group(1)), int(started.group(2))):
        deadline = time.monotonic() + 60
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not Path(f"/proc/{pid}").exists(), f"worker {pid} outlived its supervisor"


@pytest.mark.slow
def test_workers_that_cannot_start_make_the_supervisor_give_up(tmp_path: Path) -> None:
    supervised = Supervised(
        "--models", str(tmp_path / "missing"), "--port", str(free_port()), "--workers", "2"
    )
    try:
        assert supervised.stop(signal.SIGCONT, timeout=120) == 1  # SIGCONT: just wait
        supervised.wait_for(r"giving up")
    finally:
        supervised.stop(signal.SIGKILL)
