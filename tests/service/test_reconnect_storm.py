"""A reconnect storm: 5,000 sessions opened at once against a real server process.

When a replica restarts every client of it comes back at the same moment. The server
bounds the calls grpc holds before a handler takes them (``--max-pending-requests``) and
refuses the rest; the SDK retries an Open refused before its ``Opened`` with jittered
backoff. Every session must end up open and answered.
"""

from __future__ import annotations

import asyncio
import collections
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

import rnnstream
import rnnstream.aio
from rnnstream.errors import CORE_REFUSAL_DETAILS, RnnstreamError, is_retryable
from tests.service.processes import start_process, stop_process

SESSIONS = 5_000
CHANNELS = 8
DEADLINE_S = 120.0


class Server:
    """A server process whose stderr is drained all along, so its log never fills the pipe."""

    def __init__(self, models: Path, *extra: str) -> None:
        self.proc, self.address = start_process(models, "", "--default-model", "tiny", *extra)
        assert self.proc.stderr is not None
        self._drain = threading.Thread(target=self.proc.stderr.read, daemon=True)
        self._drain.start()

    def stop(self) -> None:
        """Stop it by pid (SIGTERM, then SIGKILL when it does not exit)."""
        try:
            stop_process(self.proc, signal.SIGTERM)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self._drain.join(timeout=10)


@pytest.fixture
def start_server(tiny_models: Path) -> Iterator[Callable[..., Server]]:
    """Start servers on the tiny models with extra flags; each one is stopped at the end."""
    started: list[Server] = []

    def start(*extra: str) -> Server:
        started.append(Server(tiny_models, *extra))
        return started[-1]

    yield start
    for server in started:
        server.stop()


class RetryCount:
    """Counts the SDK's backoffs (each one is a retried attempt) by wrapping ``backoff_delay``."""

    def __init__(self, patch: pytest.MonkeyPatch) -> None:
        self.count = 0
        self.most_in_a_row = 0
        original = rnnstream.aio.backoff_delay

        def counting(backoff: float, attempt: int) -> float:
            self.count += 1
            self.most_in_a_row = max(self.most_in_a_row, attempt)
            return original(backoff, attempt)

        patch.setattr(rnnstream.aio, "backoff_delay", counting)


async def storm(address: str) -> list[BaseException | None]:
    """Open every session at once over a few channels, step each once, close them all.

    One entry per session: None when it opened, answered right and closed, else its error.
    """
    clients = [rnnstream.AsyncClient(address) for _ in range(CHANNELS)]
    sessions = [clients[i % CHANNELS].session(model="tiny") for i in range(SESSIONS)]
    try:
        opened = await asyncio.gather(*(s.open() for s in sessions), return_exceptions=True)
        results: list[BaseException | None] = [
            r if isinstance(r, BaseException) else None for r in opened
        ]

        async def answer(i: int) -> None:
            x = np.array([i % 7, -1.0], dtype=np.float32)
            y = await sessions[i].step(x)
            assert y.shape == (3,) and np.isfinite(y).all()

        open_ones = [i for i, r in enumerate(results) if r is None]
        stepped = await asyncio.gather(*(answer(i) for i in open_ones), return_exceptions=True)
        for i, r in zip(open_ones, stepped, strict=True):
            results[i] = r if isinstance(r, BaseException) else None
        return results
    finally:
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
        await asyncio.gather(*(c.close() for c in clients))


def failures(results: list[BaseException | None]) -> collections.Counter[str]:
    """How many sessions failed, by error."""
    return collections.Counter(repr(r)[:200] for r in results if r is not None)


def run_storm(address: str) -> list[BaseException | None]:
    """The storm, bounded in time; prints how long it took (not asserted: a noisy machine)."""
    started = time.monotonic()
    results = asyncio.run(asyncio.wait_for(storm(address), DEADLINE_S))
    print(f"{SESSIONS} sessions opened, answered and closed in {time.monotonic() - started:.1f}s")
    return results


def test_grpc_cores_refusal_is_retried_only_at_open() -> None:
    # What the asyncio client sees of a call the server's grpc core refused (past
    # --max-pending-requests) before any handler took it.
    refused = RnnstreamError(CORE_REFUSAL_DETAILS, grpc.StatusCode.INTERNAL)
    assert is_retryable(refused, at_open=True)
    assert not is_retryable(refused)  # after Opened it may have touched the session
    other = RnnstreamError("a bug in the server", grpc.StatusCode.INTERNAL)
    assert not is_retryable(other, at_open=True)


@pytest.mark.slow
def test_every_session_of_a_storm_opens_and_answers(
    start_server: Callable[..., Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = start_server()
    retries = RetryCount(monkeypatch)
    results = run_storm(server.address)
    assert not failures(results), failures(results)
    print(f"default limits: {SESSIONS} sessions, {retries.count} retries")


@pytest.mark.slow
def test_a_server_at_its_pending_limit_sheds_the_storm_and_every_session_opens(
    start_server: Callable[..., Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = start_server("--max-pending-requests", "500")
    retries = RetryCount(monkeypatch)
    results = run_storm(server.address)
    assert not failures(results), failures(results)
    assert retries.count > 0  # the server refused Opens, and the SDK retried them
    print(
        f"--max-pending-requests 500: {SESSIONS} sessions, {retries.count} retries, "
        f"at most {retries.most_in_a_row} in a row"
    )
