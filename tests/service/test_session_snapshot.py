"""Sessions into snapshot records and back, without a network or a file."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from rnnstream.server import session_snapshot
from rnnstream.server.repository import ModelRepository
from rnnstream.server.sessions import SessionManager
from rnnstream.server.settings import Settings


@pytest.fixture
def settings(tiny_models: Path) -> Settings:
    return Settings.from_env(
        {},
        models=tiny_models,
        state_dir="",
        replay_steps=4,
        inline_max_steps=0,  # every step goes through the engine thread: it is in flight
    )


@pytest.fixture
def repository(settings: Settings) -> Iterator[ModelRepository]:
    repository = ModelRepository.load(settings)
    yield repository
    repository.close()


def test_a_snapshot_during_a_request_records_the_row_and_step_from_before_it(repository, settings):
    sessions = SessionManager(repository, settings)
    session = sessions.create("tiny", "", None, False)
    x = np.random.default_rng(1).standard_normal((52, 2)).astype(np.float32)

    async def drive():
        await sessions.steps(session, 0, x[:2])
        before = session.state_row()
        task = asyncio.ensure_future(sessions.steps(session, 2, x[2:]))
        await asyncio.sleep(0)  # the request is submitted to the engine thread
        assert session.inflight is not None
        (group,) = session_snapshot.take(sessions)
        await task
        return before, group.records[0]

    before, record = asyncio.run(drive())
    assert record.next_step == 2 and record.sequence_steps == 2
    np.testing.assert_array_equal(record.state, before)
    assert session.next_step == 52  # the request then ended, moving row and step together
    assert not np.array_equal(session.state_row(), before)


def test_restore_brings_every_session_back_where_it_was(repository, settings):
    sessions = SessionManager(repository, settings)
    first = sessions.create("tiny", "", None, True)
    second = sessions.create("tiny-m2o", "", None, False)

    async def drive():
        await sessions.steps(first, 0, np.ones((6, 2), np.float32))
        await sessions.steps(second, 0, np.ones((3, 3), np.float32))

    asyncio.run(drive())
    groups = session_snapshot.take(sessions)
    restored = SessionManager(repository, settings)
    for s in list(sessions):  # free the rows: the restored sessions share the tables
        sessions.delete(s.id)
    assert session_snapshot.restore(restored, groups) == 2
    again = restored.get(first.id)
    assert (again.next_step, again.restored_step, again.sequence_steps) == (6, 6, 6)
    assert again.return_state and again.replay.start == 2 and len(again.replay.y) == 4
    assert restored.get(second.id).next_step == 3
    record = next(r for g in groups for r in g.records if r.session_id == first.id)
    np.testing.assert_array_equal(again.state_row(), record.state)


def test_a_group_of_another_graph_is_refused_with_a_reason(repository, settings):
    sessions = SessionManager(repository, settings)
    session = sessions.create("tiny", "", None, False)
    (group,) = session_snapshot.take(sessions)
    group.onnx_sha256 = "0" * 64
    sessions.delete(session.id)
    restored = SessionManager(repository, settings)
    assert session_snapshot.restore(restored, [group]) == 0
    assert "another graph of tiny/1" in restored.refused[session.id]
