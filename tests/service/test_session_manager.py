"""Session lifecycle without a network: TTL expiry, eviction at capacity, reasons."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from rnnstream.server.end_reasons import EndReason
from rnnstream.server.errors import InvalidArgument, NotFound, ResourceExhausted, Unavailable
from rnnstream.server.repository import ModelRepository
from rnnstream.server.session_ids import check_session_id, new_session_id
from rnnstream.server.sessions import SessionManager
from rnnstream.server.settings import Settings
from rnnstream.server.stream_handle import StreamHandle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def manager(tiny_models: Path):
    settings = Settings.from_env(
        {},
        models=tiny_models,
        max_sessions=3,
        idle_ttl_s=10.0,
        max_idle_ttl_s=7200.0,
        max_streams=4,
        state_dir="",
        inline_max_steps=0,  # every step goes through the engine thread, concurrently
    )
    repo = ModelRepository.load(settings)
    clock = Clock()
    yield SessionManager(repo, settings, clock=clock), clock
    repo.close()


def test_idle_sessions_expire_after_ttl_but_live_ones_stay(manager):
    sessions, clock = manager
    idle = sessions.create("tiny", "", None, False)
    live = sessions.create("tiny", "", None, False)
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
    first = sessions.create("tiny", "", None, False)
    clock.now += 1
    second = sessions.create("tiny", "", None, False)
    clock.now += 1
    third = sessions.create("tiny", "", None, False)
    sessions.attach(first, StreamHandle(None))  # live: never evicted
    fourth = sessions.create("tiny", "", None, False)
    assert second.ended is EndReason.EVICTED
    assert third.ended is None and fourth.ended is None and first.ended is None


def test_eviction_takes_the_model_own_least_recent_idle_session(manager):
    sessions, clock = manager
    others = [sessions.create("tiny-m2o", "", None, False) for _ in range(3)]  # oldest
    clock.now += 1
    mine = [sessions.create("tiny", "", None, False) for _ in range(3)]
    sessions.attach(mine[0], StreamHandle(None))
    newest = sessions.create("tiny", "", None, False)  # tiny is full: evicts mine[1]
    assert mine[1].ended is EndReason.EVICTED
    assert all(s.ended is None for s in [*others, mine[0], mine[2], newest])
    assert len(sessions) == 6
    assert sessions.get(others[0].id) is others[0] and sessions.get(newest.id) is newest
    assert {s.model.key for s in list(sessions)} == {"tiny/1", "tiny-m2o/1"}


def test_full_of_live_sessions_is_resource_exhausted(manager):
    sessions, _ = manager
    for _ in range(3):
        sessions.attach(sessions.create("tiny", "", None, False), StreamHandle(None))
    with pytest.raises(ResourceExhausted, match="already holds 3 sessions"):
        sessions.create("tiny", "", None, False)
    # other models have their own tables
    assert sessions.create("tiny-m2o", "", None, False).model.manifest.name == "tiny-m2o"


def test_deleting_during_a_step_frees_the_row_only_after_it(manager):
    sessions, _ = manager

    async def drive():
        s = sessions.create("tiny", "", None, False)
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
    live = sessions.create("tiny", "", None, False)
    handle = StreamHandle(None)
    sessions.attach(live, handle)
    sessions.drain()
    assert handle.reason is EndReason.DRAINING
    assert live.ended is None  # kept: it can be resumed after a restart
    with pytest.raises(Unavailable, match="draining"):
        sessions.create("tiny", "", None, False)


def test_a_step_that_fails_midway_changes_nothing(manager):
    sessions, _ = manager
    session = sessions.create("tiny", "", None, None)
    graph = session.model.graph
    run, calls = graph.run, []

    def failing(x, state):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("injected onnxruntime failure")
        return run(x, state)

    before = session.model.table.rows[session.row].copy()
    graph.run = failing
    try:
        with pytest.raises(RuntimeError, match="injected"):
            asyncio.run(sessions.steps(session, 0, np.ones((5, 2), np.float32)))
    finally:
        graph.run = run
    assert session.next_step == 0  # two steps ran, then the third failed:
    np.testing.assert_array_equal(session.model.table.rows[session.row], before)  # undone


def test_an_engine_error_outside_run_fails_the_request_not_the_engine(manager):
    sessions, _ = manager
    session = sessions.create("tiny", "", None, None)
    engine = session.model.engine

    def broken(size):
        raise ValueError("metrics hook broke")

    engine.on_batch = broken
    with pytest.raises(ValueError, match="metrics hook broke"):
        asyncio.run(sessions.steps(session, 0, np.ones((2, 2), np.float32)))
    engine.on_batch = None
    out = asyncio.run(sessions.steps(session, 0, np.ones((2, 2), np.float32)))
    assert out.applied == 2 and session.next_step == 2  # the engine thread still serves


def test_resuming_counts_against_the_stream_limit(manager):
    sessions, _ = manager
    idle = sessions.create("tiny", "", None, None)
    for model in ("tiny", "tiny", "tiny-m2o", "tiny-m2o"):  # 4 live streams: the limit
        sessions.attach(sessions.create(model, "", None, None), StreamHandle(None))
    with pytest.raises(ResourceExhausted, match="--max-streams"):
        asyncio.run(sessions.open("", "", idle.id, None, None))
    live = next(s for s in list(sessions) if s.live)
    resumed = asyncio.run(sessions.open("", "", live.id, None, None))
    assert resumed is live  # a takeover adds no stream


def test_a_shorter_ttl_on_resume_takes_effect(manager):
    sessions, clock = manager
    session = sessions.create("tiny", "", None, None, idle_ttl_s=3600)
    clock.now += 5
    asyncio.run(sessions.open("", "", session.id, None, None, idle_ttl_s=20))
    clock.now += 30
    assert sessions.expire_idle() == [session]


def test_retransmission_with_return_state_returns_states_for_new_steps(manager):
    sessions, _ = manager
    session = sessions.create("tiny", "", None, None)
    x = np.random.default_rng(3).standard_normal((6, 2)).astype(np.float32)
    asyncio.run(sessions.steps(session, 0, x[:4]))
    asyncio.run(sessions.open("", "", session.id, None, True))  # resume, now with return_state
    out = asyncio.run(sessions.steps(session, 3, x[3:]))
    assert out.states is not None and len(out.states) == len(out.y) == 6 - out.start


@pytest.mark.parametrize("inline_max_steps", [0, 64])
def test_a_message_of_no_steps_applies_nothing(tiny_models: Path, inline_max_steps: int):
    settings = Settings.from_env(
        {}, models=tiny_models, state_dir="", inline_max_steps=inline_max_steps
    )
    repo = ModelRepository.load(settings)
    sessions = SessionManager(repo, settings)
    session = sessions.create("tiny", "", None, False)

    async def drive():
        await sessions.steps(session, 0, np.ones((3, 2), np.float32))
        row = session.state_row()
        out = await sessions.steps(session, 3, np.empty((0, 2), np.float32))
        assert out.applied == 0 and len(out.y) == 0 and session.next_step == 3
        np.testing.assert_array_equal(session.state_row(), row)

    try:
        asyncio.run(drive())
    finally:
        repo.close()


def test_a_failing_metrics_hook_on_the_lean_path_moves_nothing(tiny_models: Path):
    settings = Settings.from_env({}, models=tiny_models, state_dir="", inline_max_steps=64)
    repo = ModelRepository.load(settings)
    sessions = SessionManager(repo, settings)
    session = sessions.create("tiny", "", None, False)
    engine = session.model.engine

    def broken(size: int) -> None:
        raise RuntimeError("metrics backend down")

    async def drive():
        await sessions.steps(session, 0, np.ones((2, 2), np.float32))
        row = session.state_row()
        engine.on_batch = broken
        with pytest.raises(RuntimeError, match="metrics backend down"):
            await sessions.steps(session, 2, np.ones((2, 2), np.float32))
        assert session.next_step == 2  # neither the row nor the step count moved:
        np.testing.assert_array_equal(session.state_row(), row)  # a resend applies once
        engine.on_batch = None
        out = await sessions.steps(session, 2, np.ones((2, 2), np.float32))
        assert out.applied == 2 and session.next_step == 4

    try:
        asyncio.run(drive())
    finally:
        repo.close()


CLIENT_ID = "client-chosen-id-0123456789abcdef"


def test_create_under_a_client_id_is_idempotent(manager):
    sessions, _ = manager
    first = asyncio.run(sessions.open("tiny", "", CLIENT_ID, None, None, create=True))
    assert first.id == CLIENT_ID and first.next_step == 0
    asyncio.run(sessions.steps(first, 0, np.ones((3, 2), np.float32)))
    again = asyncio.run(sessions.open("tiny", "", CLIENT_ID, None, None, create=True))
    assert again is first and again.next_step == 3 and len(sessions) == 1


def test_a_resume_without_create_of_an_absent_id_is_not_found(manager):
    sessions, _ = manager
    with pytest.raises(NotFound, match="does not exist"):
        asyncio.run(sessions.open("tiny", "", CLIENT_ID, None, None))
    assert len(sessions) == 0


@pytest.mark.parametrize(
    "bad", ["short", "x" * 129, "has space in it 0123", "slash/in/it/0123456", "ünïcode-0123456789"]
)
def test_ids_outside_the_rule_are_invalid_everywhere_and_change_nothing(manager, bad):
    sessions, _ = manager
    for create in (False, True):
        with pytest.raises(InvalidArgument, match=r"16 to 128 characters of \[A-Za-z0-9_-\]"):
            asyncio.run(sessions.open("tiny", "", bad, None, None, create=create))
    with pytest.raises(InvalidArgument, match="16 to 128"):
        sessions.get(bad)
    with pytest.raises(InvalidArgument, match="16 to 128"):
        sessions.delete(bad)
    assert len(sessions) == 0


def test_a_create_for_another_model_than_the_session_is_refused(manager):
    sessions, _ = manager
    session = asyncio.run(sessions.open("tiny", "", CLIENT_ID, None, None, create=True))
    with pytest.raises(InvalidArgument, match="belongs to model tiny/1"):
        asyncio.run(sessions.open("tiny-m2o", "", CLIENT_ID, None, None, create=True))
    assert sessions.find(CLIENT_ID) is session and len(sessions) == 1


def test_create_without_an_id_is_refused(manager):
    sessions, _ = manager
    with pytest.raises(InvalidArgument, match=r"without Open\.session_id"):
        asyncio.run(sessions.open("tiny", "", "", None, None, create=True))


def test_server_made_ids_follow_the_rule():
    for _ in range(100):
        check_session_id(new_session_id(), "session_id")
