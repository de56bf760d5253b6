"""Scale-out fixtures: a real redis-server, and server processes sharing it, stopped by pid."""

from __future__ import annotations

import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rnnstream.server.repository import ModelRepository
from rnnstream.server.settings import Settings
from tests.service.duplex import Duplex
from tests.service.processes import start_process
from tests.service.store.redis_server import RedisServer, running_redis

LEASE_TTL_S = 1.0
DEBUG = False  # print the servers' last log lines after each test


redis_server = pytest.fixture(scope="module", name="redis_server")(running_redis)


Start = Callable[..., tuple[subprocess.Popen[str], str]]
Reference = Callable[[np.ndarray], np.ndarray]


@pytest.fixture(scope="module")
def want(tiny_models: Path) -> Iterator[Reference]:
    """The outputs of an uninterrupted run of ``x [T, F]``, in-process from the same graph."""
    repository = ModelRepository.load(Settings.from_env({}, models=tiny_models, state_dir=""))
    loaded = repository.get("tiny", "")

    def run(x: np.ndarray) -> np.ndarray:
        state = loaded.table.initial[None].copy()
        ys = []
        for t in range(len(x)):
            y, state = loaded.graph.run(x[t : t + 1], state)
            ys.append(y[0])
        return np.stack(ys)

    yield run
    repository.close()


@pytest.fixture
def start_replica(tiny_models: Path, redis_server: RedisServer, tmp_path: Path) -> Iterator[Start]:
    """Start ``rnnstream serve`` processes on the shared Redis; each is killed at the end."""
    started: list[tuple[subprocess.Popen[str], threading.Thread]] = []
    logs: list[list[str]] = []
    if redis_server.proc is None:
        redis_server.start()
    redis_server.flush()

    def start(*extra: str) -> tuple[subprocess.Popen[str], str]:
        proc, address = start_process(
            tiny_models,
            "",
            "--store",
            redis_server.url,
            "--lease-ttl-s",
            str(LEASE_TTL_S),
            "--default-model",
            "tiny",
            "--grace-s",
            "1",
            *extra,
        )
        log: list[str] = []
        logs.append(log)
        started.append((proc, drain_stderr(proc, log)))
        return proc, address

    yield start
    for proc, reader in started:
        stop(proc, reader)
    if DEBUG:
        for log in logs:
            print("".join(log[-30:]))


def stop(proc: subprocess.Popen[str], reader: threading.Thread) -> None:
    """Kill the process (if still running), then close its log pipe."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGCONT)  # a paused process dies only once continued
        proc.kill()
    proc.wait(timeout=30)
    reader.join(timeout=30)
    if proc.stderr is not None:
        proc.stderr.close()


def drain_stderr(proc: subprocess.Popen[str], keep: list[str] | None = None) -> threading.Thread:
    """Keep reading the process's log in a thread (into ``keep``), so a full pipe never stalls."""
    stream = proc.stderr
    assert stream is not None

    def read() -> None:
        for line in stream:
            if keep is not None:
                keep.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return reader


@pytest.fixture(autouse=True)
def cancel_streams(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Cancel every test stream at the end: an ended call's request thread would linger."""
    made: list[Duplex] = []
    init = Duplex.__init__

    def tracked(self: Duplex, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(Duplex, "__init__", tracked)
    yield
    for stream in made:
        stream.cancel()
