"""SDK fixtures: a Client on the shared test server, and reference outputs."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

import rnnstream
from tests.conftest import TINY, TINY_M2O


@pytest.fixture
def client(server) -> Iterator[rnnstream.Client]:
    with rnnstream.Client(server.address, timeout=10, backoff=0.01) as c:
        yield c


def reference(x: np.ndarray, m2o: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """y [T, O] and states [T, S] of the tiny model over one sequence x [T, F]."""
    y, h = (TINY_M2O if m2o else TINY).run(x[None])
    return y[0], h[0]


def server_next_step(server, session_id: str) -> int:
    """The server's own next_step for a session (read on the server's loop thread)."""
    return int(server.call(lambda: server.running.sessions.get(session_id).next_step))


def rand(seed: int, t: int, f: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((t, f)).astype(np.float32)
