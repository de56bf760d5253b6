"""Sessions that move between the worker processes of one supervisor (``local`` store)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from rnnstream.v1 import rnnstream_pb2_grpc as pb_grpc
from tests.service.duplex import Duplex, outputs_y
from tests.service.processes import start_process
from tests.service.scale_out.conftest import LEASE_TTL_S, Reference, drain_stderr, stop
from tests.service.scale_out.test_replicas import sequence, sid

CHUNKS = ((0, 3), (3, 6), (6, 9), (9, 12))


def workers_of(pid: int) -> list[int]:
    """The supervisor's child processes."""
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


@pytest.fixture
def supervisor(tiny_models: Path) -> Iterator[tuple[int, str, list[str]]]:
    """``rnnstream serve --workers 2`` without --store or state directory."""
    proc, address = start_process(
        tiny_models,
        "",
        "--workers",
        "2",
        "--lease-ttl-s",
        str(LEASE_TTL_S),
        "--snapshot-interval-s",
        "0.2",
        "--default-model",
        "tiny",
        "--grace-s",
        "1",
    )
    log: list[str] = []
    reader = drain_stderr(proc, log)
    try:
        deadline = time.monotonic() + 60
        while len(workers_of(proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        yield proc.pid, address, log
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        reader.join(timeout=30)
        assert code == 0, "".join(log[-40:])
    finally:
        stop(proc, reader)


def step_on_a_new_connection(address: str, i: int, start: int, stop_at: int) -> tuple[int, list]:
    """Open session ``i`` on a fresh connection, send steps from its next step to ``stop_at``."""
    x = sequence(i)
    with grpc.insecure_channel(address) as channel:
        stream = Duplex(pb_grpc.PredictorStub(channel))
        opened = stream.open(model="tiny", session_id=sid(900 + i), create=True)
        assert opened.next_step <= start
        y = outputs_y(stream.steps(opened.next_step, x[opened.next_step : stop_at]), 3)
        stream.half_close()
    return opened.next_step, list(y)


def test_sessions_continue_exactly_on_whichever_worker_and_survive_a_killed_one(
    supervisor: tuple[int, str, list[str]], want: Reference
) -> None:
    pid, address, log = supervisor
    n = 8
    ys: dict[int, list] = {i: [] for i in range(n)}
    for start, stop_at in CHUNKS[:3]:
        for i in range(n):
            resumed_at, y = step_on_a_new_connection(address, i, start, stop_at)
            assert resumed_at == start  # both workers alive: every move is a hand-over
            ys[i] += y
    time.sleep(1.0)  # several checkpoint intervals
    victim = workers_of(pid)[0]

    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 60
    # Serving again (the first worker to serve was read by start_process).
    while sum("serving tiny" in line for line in list(log)) < 2:
        assert time.monotonic() < deadline, "the supervisor did not restart the killed worker"
        time.sleep(0.1)
    assert victim not in workers_of(pid)
    start, stop_at = CHUNKS[3]
    for i in range(n):
        resumed_at, y = step_on_a_new_connection(address, i, start, stop_at)
        assert resumed_at == start  # from its checkpoint, which holds every step
        ys[i] += y
        np.testing.assert_array_equal(np.array(ys[i]), want(sequence(i)))
