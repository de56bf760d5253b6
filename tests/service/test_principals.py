"""Sessions owned by their principal, and fair per-principal limits, without a network."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from rnnstream.server import session_snapshot, snapshot
from rnnstream.server.end_reasons import EndReason
from rnnstream.server.errors import NotFound, ResourceExhausted
from rnnstream.server.metrics import Metrics
from rnnstream.server.moves import SessionMover
from rnnstream.server.ownership import Ownership
from rnnstream.server.repository import ModelRepository
from rnnstream.server.sessions import Session, SessionManager
from rnnstream.server.settings import Settings
from rnnstream.server.store import StoredSession
from rnnstream.server.store.entry import decode_entry, encode_entry
from rnnstream.server.store.local_store import LocalStore
from rnnstream.server.stream_handle import StreamHandle
from tests.service.store.conftest import GRAPH, stored

SID = "principal-test-session-0001"
MISSING = "principal-test-missing-0002"
X = np.random.default_rng(7).standard_normal((6, 2)).astype(np.float32)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def repository(tiny_models: Path) -> Iterator[ModelRepository]:
    repository = ModelRepository.load(_settings(tiny_models))
    yield repository
    repository.close()


def _settings(tiny_models: Path, **limits: int) -> Settings:
    return Settings.from_env(
        {}, models=tiny_models, state_dir="", inline_max_steps=0, max_sessions=3, **limits
    )


def _manager(repository: ModelRepository, tiny_models: Path, **limits: int) -> SessionManager:
    return SessionManager(repository, _settings(tiny_models, **limits), clock=Clock())


def _not_found(call: Callable[[], object]) -> str:
    """The message of the NotFound ``call()`` raises (awaited when it is a coroutine)."""
    with pytest.raises(NotFound) as caught:
        result = call()
        if asyncio.iscoroutine(result):
            asyncio.run(result)
    return caught.value.message


def _as_missing(message: str, session_id: str = SID) -> str:
    """``message`` with ``session_id`` replaced by the id of no session."""
    return message.replace(session_id, MISSING)


def _where(session: Session) -> tuple[object, ...]:
    """Everything about a session another principal's request could change."""
    return (
        session.next_step,
        session.sequence_steps,
        session.last_active,
        session.return_sequences,
        session.return_state,
        session.idle_ttl_s,
        session.owner,
        session.ended,
        session.state_row().tobytes(),
    )


def test_another_principal_cannot_resume_get_or_delete_and_changes_nothing(repository, tiny_models):
    sessions = _manager(repository, tiny_models)
    clock = sessions.clock
    assert isinstance(clock, Clock)
    mine = asyncio.run(sessions.open("tiny", "", SID, None, False, create=True, principal="alice"))
    first = asyncio.run(sessions.steps(mine, 0, X[:4]))
    clock.now += 5
    before = _where(mine)
    missing_get = _not_found(lambda: sessions.get(MISSING, "bob"))
    missing_open = _not_found(lambda: sessions.open("", "", MISSING, None, None, principal="bob"))
    # Resume (with new modes and TTL), create under the id, GetSession, DeleteSession.
    attempts = [
        lambda: sessions.open("", "", SID, True, True, 20.0, principal="bob"),
        lambda: sessions.open("tiny", "", SID, None, None, create=True, principal="bob"),
        lambda: sessions.get(SID, "bob"),
        lambda: sessions.get(SID),  # principal "": an unauthenticated caller is no exception
    ]
    for attempt in attempts:
        message = _not_found(attempt)
        assert _as_missing(message) in (missing_get, missing_open)
        assert _where(mine) == before
    assert not sessions.delete(SID, "bob")
    assert _where(mine) == before and sessions.find(SID) is mine
    # Steps go through a stream's Open, which bob never gets; alice continues exactly.
    again = asyncio.run(sessions.open("", "", SID, None, None, principal="alice"))
    assert again is mine and sessions.get(SID, "alice") is mine
    rest = asyncio.run(sessions.steps(mine, 4, X[4:]))
    reference = sessions.create("tiny", "", None, False, principal="carol")
    want = asyncio.run(sessions.steps(reference, 0, X))
    np.testing.assert_array_equal(np.concatenate([first.y, rest.y]), want.y)
    assert sessions.delete(SID, "alice") and sessions.find(SID) is None


def test_without_authentication_every_caller_is_principal_empty(repository, tiny_models):
    sessions = _manager(repository, tiny_models)
    session = asyncio.run(sessions.open("tiny", "", SID, None, None, create=True))
    assert session.principal == ""
    assert asyncio.run(sessions.open("", "", SID, None, None)) is session
    assert sessions.get(SID) is session and sessions.delete(SID)


def test_a_principal_at_its_session_limit_is_refused_and_others_are_not(repository, tiny_models):
    sessions = _manager(repository, tiny_models, max_sessions_per_principal=2)
    alice = [sessions.create("tiny", "", None, None, principal="alice") for _ in range(2)]
    with pytest.raises(ResourceExhausted, match="'alice' already holds 2 sessions") as refused:
        sessions.create("tiny-m2o", "", None, None, principal="alice")  # across models
    assert "--max-sessions-per-principal" in refused.value.message
    with pytest.raises(ResourceExhausted, match="--max-sessions-per-principal"):
        asyncio.run(sessions.open("tiny", "", SID, None, None, create=True, principal="alice"))
    assert sessions.create("tiny", "", None, None, principal="bob").principal == "bob"
    assert sessions.limit_refusals["max_sessions_per_principal"] == 2
    assert sessions.delete(alice[0].id, "alice")
    assert sessions.create("tiny-m2o", "", None, None, principal="alice").principal == "alice"


def test_a_principal_at_its_stream_limit_is_refused_and_others_are_not(repository, tiny_models):
    sessions = _manager(repository, tiny_models, max_streams_per_principal=2)
    alice = [sessions.create("tiny", "", None, None, principal="alice") for _ in range(3)]
    handles = [StreamHandle(None), StreamHandle(None)]
    for session, handle in zip(alice, handles, strict=False):
        sessions.attach(session, handle)
    idle = alice[2]
    with pytest.raises(ResourceExhausted, match="--max-streams-per-principal"):
        asyncio.run(sessions.open("", "", idle.id, None, None, principal="alice"))
    with pytest.raises(ResourceExhausted, match="'alice' already holds 2 live streams"):
        sessions.create("tiny-m2o", "", None, None, principal="alice")
    assert not idle.live and sessions.limit_refusals["max_streams_per_principal"] == 2
    # A takeover adds no stream; another principal has its own streams.
    assert asyncio.run(sessions.open("", "", alice[0].id, None, None, principal="alice"))
    bob = sessions.create("tiny-m2o", "", None, None, principal="bob")
    sessions.attach(bob, StreamHandle(None))
    sessions.detach(alice[1], handles[1])
    assert asyncio.run(sessions.open("", "", idle.id, None, None, principal="alice")) is idle


def test_eviction_never_makes_room_for_a_principal_over_its_limit(repository, tiny_models):
    sessions = _manager(repository, tiny_models, max_sessions_per_principal=2)
    clock = sessions.clock
    assert isinstance(clock, Clock)
    oldest = sessions.create("tiny", "", None, None, principal="alice")  # idle, least recent
    clock.now += 1
    bob = [sessions.create("tiny", "", None, None, principal="bob") for _ in range(2)]
    clock.now += 1
    assert oldest.model.table.free == 0  # tiny is full of idle sessions
    with pytest.raises(ResourceExhausted, match="--max-sessions-per-principal"):
        sessions.create("tiny", "", None, None, principal="bob")
    assert oldest.ended is None and all(s.ended is None for s in bob)
    # A principal within its limit still evicts the least recently used idle session.
    carol = sessions.create("tiny", "", None, None, principal="carol")
    assert oldest.ended is EndReason.EVICTED and carol.ended is None
    assert all(s.ended is None for s in bob) and len(sessions) == 3


def test_refusals_are_counted_by_limit_in_the_metrics(repository, tiny_models):
    sessions = _manager(repository, tiny_models, max_sessions_per_principal=1)
    metrics = Metrics(sessions)
    sessions.create("tiny", "", None, None, principal="alice")
    with pytest.raises(ResourceExhausted):
        sessions.create("tiny", "", None, None, principal="alice")
    sample = metrics.registry.get_sample_value
    assert sample("rnnstream_limit_refusals_total", {"limit": "max_sessions_per_principal"}) == 1
    assert sample("rnnstream_limit_refusals_total", {"limit": "max_streams"}) == 0


def _with_principal(session_stored: StoredSession, principal: str) -> StoredSession:
    record = dataclasses.replace(session_stored.record, principal=principal)
    return StoredSession(record, session_stored.graph)


def test_a_store_entry_carries_its_principal_in_format_2() -> None:
    original = _with_principal(stored("owned-by-alice-0001", seed=2), "alice@example")
    data = encode_entry(original, 5.0)
    assert int.from_bytes(data[4:6], "little") == 2
    back = decode_entry(data)
    assert back.record.principal == "alice@example" and back.graph == GRAPH
    assert back.record.state.tobytes() == original.record.state.tobytes()
    assert back.record.next_step == original.record.next_step


def test_an_entry_without_a_principal_is_format_1_and_reads_as_principal_empty() -> None:
    plain = stored("no-principal-0001", seed=4)
    data = encode_entry(plain, 5.0)
    assert int.from_bytes(data[4:6], "little") == 1  # what servers from before wrote and read
    with_one = encode_entry(_with_principal(plain, "x"), 5.0)
    assert len(with_one) == len(data) + 2 + 1  # format 2: the principal's length, then it
    back = decode_entry(data)
    assert back.record.principal == "" and back.session_id == "no-principal-0001"


def test_a_snapshot_carries_principals_and_an_old_one_reads_as_principal_empty(
    repository, tiny_models, tmp_path: Path
):
    sessions = _manager(repository, tiny_models)
    alice = sessions.create("tiny", "", None, None, principal="alice")
    nobody = sessions.create("tiny-m2o", "", None, None)
    asyncio.run(sessions.steps(alice, 0, X[:3]))
    path = tmp_path / "sessions.snapshot.npz"
    snapshot.write(path, session_snapshot.take(sessions))
    _, groups = snapshot.read(path)
    assert {r.session_id: r.principal for g in groups for r in g.records} == {
        alice.id: "alice",
        nobody.id: "",
    }
    for s in list(sessions):  # free the rows: the restored sessions share the tables
        sessions.delete(s.id, s.principal)
    restored = _manager(repository, tiny_models)
    assert session_snapshot.restore(restored, groups) == 2
    assert restored.get(alice.id, "alice").next_step == 3
    refused = _not_found(lambda: restored.get(alice.id, "bob"))
    assert _as_missing(refused, alice.id) == _not_found(lambda: restored.get(MISSING, "bob"))
    for s in list(restored):
        restored.delete(s.id, s.principal)
    # A snapshot of sessions without principals is written as before principals were.
    old = _manager(repository, tiny_models)
    plain = old.create("tiny", "", None, None)
    snapshot.write(path, session_snapshot.take(old))
    with np.load(path) as data:
        assert not any(name.endswith("principals") for name in data.files)
    _, groups = snapshot.read(path)
    assert [r.principal for g in groups for r in g.records] == [""]
    assert groups[0].records[0].session_id == plain.id


def test_a_session_a_snapshot_could_not_restore_says_why_only_to_its_principal(
    repository, tiny_models
):
    sessions = _manager(repository, tiny_models)
    session = sessions.create("tiny", "", None, None, principal="alice")
    (group,) = session_snapshot.take(sessions)
    group.onnx_sha256 = "0" * 64
    sessions.delete(session.id, "alice")
    restored = _manager(repository, tiny_models)
    assert session_snapshot.restore(restored, [group]) == 0
    with pytest.raises(NotFound, match="was not restored: its state belongs to another graph"):
        restored.get(session.id, "alice")
    with pytest.raises(NotFound, match="does not exist"):
        restored.get(session.id, "bob")


async def _store_manager(tiny_models: Path, path: Path) -> SessionManager:
    settings = Settings.from_env({}, models=tiny_models, state_dir="", inline_max_steps=0)
    ownership = Ownership(LocalStore(path), 5.0)
    sessions = SessionManager(ModelRepository.load(settings), settings, ownership=ownership)
    sessions.mover = SessionMover(sessions, ownership)
    return sessions


async def _two_processes(
    tiny_models: Path,
    path: Path,
    drive: Callable[[SessionManager, SessionManager], Awaitable[None]],
) -> None:
    """Run ``drive(a, b)`` with two managers sharing a store, each reading its inbox."""
    a = await _store_manager(tiny_models, path)
    b = await _store_manager(tiny_models, path)
    movers = [m.mover for m in (a, b) if m.mover is not None]
    runs = [asyncio.create_task(mover.run(0.0)) for mover in movers]
    try:
        await asyncio.gather(*(mover.listening.wait() for mover in movers))
        await drive(a, b)
    finally:
        for run in runs:
            run.cancel()
        await asyncio.gather(*runs, return_exceptions=True)
        for m in (a, b):
            m.repository.close()
            assert m.ownership is not None
            await m.ownership.store.close()


def test_a_move_to_another_principal_is_refused_and_the_session_stays(
    tiny_models: Path, tmp_path: Path
):
    async def drive(a: SessionManager, b: SessionManager) -> None:
        on_a = await a.open("tiny", "", SID, None, None, create=True, principal="alice")
        assert a.ownership is not None and b.ownership is not None
        entry = await a.ownership.store.load(SID)  # written at creation, with its principal
        assert entry is not None and entry.record.principal == "alice"
        first = await a.steps(on_a, 0, X[:4])
        handle = StreamHandle(None)
        a.attach(on_a, handle)
        with pytest.raises(NotFound) as refused:
            await b.open("", "", SID, None, None, principal="bob")
        with pytest.raises(NotFound) as absent:
            await b.open("", "", MISSING, None, None, principal="bob")
        assert _as_missing(refused.value.message) == absent.value.message
        with pytest.raises(NotFound):
            await b.open("tiny", "", SID, None, None, create=True, principal="bob")
        assert b.mover is not None
        with pytest.raises(NotFound):  # DeleteSession brings the session first
            await b.mover.bring(SID, False, "", "", None, None, 0.0, "bob")
        # Nothing moved: A holds it under a fresh lease, its stream goes on.
        assert a.find(SID) is on_a and b.find(SID) is None and len(b) == 0
        assert a.ownership.fresh(SID) and handle.reason is None and on_a.live
        rest = await a.steps(on_a, 4, X[4:])
        a.detach(on_a, handle)
        # Its own principal moves it, exactly where it was.
        on_b = await b.open("", "", SID, None, None, principal="alice")
        assert on_b.principal == "alice" and on_b.next_step == 6
        for _ in range(500):  # A drops the object once its hand-over call has returned
            if a.find(SID) is None:
                break
            await asyncio.sleep(0.01)
        assert a.find(SID) is None
        reference = await b.open("tiny", "", MISSING, None, None, create=True, principal="c")
        want = await b.steps(reference, 0, X)
        np.testing.assert_array_equal(np.concatenate([first.y, rest.y]), want.y)

    asyncio.run(_two_processes(tiny_models, tmp_path / "s.sqlite3", drive))


def test_an_entry_of_another_principal_that_arrives_is_given_back_intact(
    tiny_models: Path, tmp_path: Path
):
    """A session without a principal is not stored at creation: the arriving entry is checked."""

    async def drive(a: SessionManager, b: SessionManager) -> None:
        on_a = await a.open("tiny", "", SID, None, None, create=True)
        assert a.ownership is not None and await a.ownership.store.load(SID) is None
        await a.steps(on_a, 0, X[:4])
        state = on_a.state_row()
        with pytest.raises(NotFound, match="does not exist"):
            await b.open("", "", SID, None, None, principal="bob")
        assert b.find(SID) is None and b.ownership is not None and b.ownership.lease(SID) is None
        entry = await b.ownership.store.load(SID)
        assert entry is not None and entry.record.next_step == 4
        back = await b.open("", "", SID, None, None)  # its own principal resumes it exactly
        assert back.next_step == 4 and back.state_row().tobytes() == state.tobytes()

    asyncio.run(_two_processes(tiny_models, tmp_path / "s.sqlite3", drive))


def test_a_principal_at_its_session_limit_moves_nothing_here(tiny_models: Path, tmp_path: Path):
    async def drive(a: SessionManager, b: SessionManager) -> None:
        on_a = await a.open("tiny", "", SID, None, None, create=True, principal="alice")
        b.settings = dataclasses.replace(b.settings, max_sessions_per_principal=1)
        await b.open("tiny", "", MISSING, None, None, create=True, principal="alice")
        with pytest.raises(ResourceExhausted, match="--max-sessions-per-principal"):
            await b.open("", "", SID, None, None, principal="alice")
        assert a.find(SID) is on_a and a.ownership is not None and a.ownership.fresh(SID)

    asyncio.run(_two_processes(tiny_models, tmp_path / "s.sqlite3", drive))


def test_counts_per_principal_follow_sessions_that_end_or_move(repository, tiny_models):
    sessions = _manager(repository, tiny_models, max_sessions_per_principal=1)
    session = sessions.create("tiny", "", None, None, principal="alice")
    sessions.attach(session, StreamHandle(None))
    sessions.forget(session)  # moved away: neither its session nor its stream counts here
    again = sessions.create("tiny", "", None, None, principal="alice")
    sessions.close(again, EndReason.CLIENT_END)
    assert sessions.create("tiny", "", None, None, principal="alice").principal == "alice"
    assert sessions.live_streams == 0
