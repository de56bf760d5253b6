"""Session lifecycle without a network: TTL expiry, eviction at capacity, reasons."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from service.errors import ResourceExhausted, Unavailable
from service.repository import ModelRepository
from service.sessions import EndReason, SessionManager, StreamHandle
from service.settings import Settings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def manager(tiny_models: Path):
    settings = Settings.from_env({}, models=tiny_models, max_sessions=3, idle_ttl_s=10.0)
    repo = ModelRepository.load(settings)
    clock = Clock()
    yield SessionManager(repo, settings, clock=clock), clock
    repo.close()


def test_idle_sessions_expire_after_ttl_but_live_ones_stay(manager):
    sessions, clock = manager
    idle = sessions.open("tiny", "", "", None, False)
    live = sessions.open("tiny", "", "", None, False)
    handle = StreamHandle(None)
    sessions.attach(live, handle)
    clock.now += 5
    assert sessions.expire_idle() == []
    clock.now += 6
    assert sessions.expire_idle() == [idle]
    assert idle.ended is EndReason.IDLE_TTL and live.ended is None
    assert sessions.ended_counts[EndReason.IDLE_TTL] == 1
    assert handle.reason is None


def test_capacity_evicts_least_recently_used_idle_session(manager):
    sessions, clock = manager
    first = sessions.open("tiny", "", "", None, False)
    clock.now += 1
    second = sessions.open("tiny", "", "", None, False)
    clock.now += 1
    third = sessions.open("tiny", "", "", None, False)
    sessions.attach(first, StreamHandle(None))  # live: never evicted
    fourth = sessions.open("tiny", "", "", None, False)
    assert second.ended is EndReason.EVICTED
    assert third.ended is None and fourth.ended is None and first.ended is None


def test_full_of_live_sessions_is_resource_exhausted(manager):
    sessions, _ = manager
    for _ in range(3):
        sessions.attach(sessions.open("tiny", "", "", None, False), StreamHandle(None))
    with pytest.raises(ResourceExhausted, match="already holds 3 sessions"):
        sessions.open("tiny", "", "", None, False)
    # other models have their own tables
    assert sessions.open("tiny-m2o", "", "", None, False).model.manifest.name == "tiny-m2o"


def test_deleting_during_a_step_frees_the_row_only_after_it(manager):
    sessions, _ = manager

    async def drive():
        s = sessions.open("tiny", "", "", None, False)
        row = s.row
        task = asyncio.ensure_future(sessions.steps(s, 0, np.ones((50, 2), np.float32)))
        await asyncio.sleep(0)
        assert sessions.delete(s.id)
        table = s.model.table
        assert table.free == 2  # still held by the step in flight
        await asyncio.gather(task, return_exceptions=True)
        return table, row

    table, _ = asyncio.run(drive())
    assert table.free == 3


def test_draining_refuses_new_sessions_and_ends_live_streams(manager):
    sessions, _ = manager
    live = sessions.open("tiny", "", "", None, False)
    handle = StreamHandle(None)
    sessions.attach(live, handle)
    sessions.drain()
    assert handle.reason is EndReason.DRAINING
    assert live.ended is None  # kept: it can be resumed after a restart
    with pytest.raises(Unavailable, match="draining"):
        sessions.open("tiny", "", "", None, False)
