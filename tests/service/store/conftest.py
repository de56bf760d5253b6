"""Store fixtures: a real redis-server for the session, and each backend to test alike."""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from rnnstream.server.snapshot import SessionRecord
from rnnstream.server.store import GraphIdentity, SessionStore, StoredSession
from rnnstream.server.store.local_store import LocalStore
from tests.service.store.redis_server import RedisServer, running_redis

GRAPH = GraphIdentity("tiny", "1", "ab" * 32, n_outputs=3, state_size=5)


def stored(session_id: str, seed: int = 0, idle_ttl_s: float = 3600.0) -> StoredSession:
    """A session with random state and replay cache, distinct per ``seed``."""
    rng = np.random.default_rng(seed)
    record = SessionRecord(
        session_id=session_id,
        state=rng.standard_normal(GRAPH.state_size).astype(np.float32),
        next_step=10 + seed,
        sequence_steps=4,
        return_sequences=True,
        return_state=False,
        idle_ttl_s=idle_ttl_s,
        age_s=12.5,
        replay_start=8 + seed,
        replay_y=rng.standard_normal((2, GRAPH.n_outputs)).astype(np.float32),
        replay_states=None,
    )
    return StoredSession(record, GRAPH)


@dataclass
class Backend:
    """A store under test: how to open one, and how to plant raw bytes as an entry."""

    name: str
    open: Callable[[], SessionStore]
    plant: Callable[[str, bytes], None]


redis_server = pytest.fixture(scope="session", name="redis_server")(running_redis)


def _redis_backend(server: RedisServer) -> Backend:
    from rnnstream.server.store.redis_store import PREFIX, RedisStore

    def plant(session_id: str, data: bytes) -> None:
        import redis

        with redis.Redis(port=server.port) as client:
            client.set(PREFIX + "session:" + session_id, data)

    server.flush()
    return Backend("redis", lambda: RedisStore(server.url), plant)


def _local_backend(path: Path) -> Backend:
    def plant(session_id: str, data: bytes) -> None:
        with sqlite3.connect(path) as conn:
            conn.execute(
                "INSERT OR REPLACE INTO entries VALUES (?, ?, ?)",
                (session_id, data, sys.float_info.max),
            )

    return Backend("local", lambda: LocalStore(path), plant)


@pytest.fixture(params=["redis", "local"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "redis":
        return _redis_backend(request.getfixturevalue("redis_server"))
    return _local_backend(tmp_path / "sessions.sqlite3")
