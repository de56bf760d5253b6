"""Leases and fencing at the session manager, over a real LocalStore (no network)."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from rnnstream.server import moves
from rnnstream.server.errors import Unavailable
from rnnstream.server.moves import SessionMover
from rnnstream.server.ownership import Ownership
from rnnstream.server.repository import ModelRepository
from rnnstream.server.sessions import SessionManager
from rnnstream.server.settings import Settings
from rnnstream.server.store import Lease, StoreUnavailable
from rnnstream.server.store.local_store import LocalStore
from tests.conftest import free_port

SID = "ownership-test-session-0001"


async def _manager(
    tiny_models: Path, path: Path, ttl_s: float, clock: Callable[[], float] = time.monotonic
) -> SessionManager:
    settings = Settings.from_env({}, models=tiny_models, state_dir="", inline_max_steps=0)
    ownership = Ownership(LocalStore(path), ttl_s, clock=clock)
    sessions = SessionManager(ModelRepository.load(settings), settings, ownership=ownership)
    sessions.mover = SessionMover(sessions, ownership)
    return sessions


async def _close(sessions: SessionManager) -> None:
    """Close what :func:`_manager` opened: the repository's graphs and the store."""
    sessions.repository.close()
    assert sessions.ownership is not None
    await sessions.ownership.store.close()


def test_a_lease_taken_over_meanwhile_refuses_the_next_step(tiny_models: Path, tmp_path: Path):
    async def drive() -> None:
        sessions = await _manager(tiny_models, tmp_path / "s.sqlite3", ttl_s=0.3)
        try:
            session = await sessions.open("tiny", "", SID, None, None, create=True)
            await sessions.steps(session, 0, np.ones((2, 2), np.float32))
            other = LocalStore(tmp_path / "s.sqlite3")
            await asyncio.sleep(0.4)  # this process's lease expires (nobody renews it)
            taken = await other.acquire(SID, "someone-else", 30.0)
            assert isinstance(taken, Lease)
            with pytest.raises(Unavailable, match="moved to another server process"):
                await sessions.steps(session, 2, np.ones((1, 2), np.float32))
            assert sessions.find(SID) is None and session.next_step == 2
            await other.close()
        finally:
            await _close(sessions)

    asyncio.run(drive())


def test_a_stale_lease_still_held_is_renewed_before_a_step(tiny_models: Path, tmp_path: Path):
    async def drive() -> None:
        later = [0.0]
        clock = lambda: time.monotonic() + later[0]  # noqa: E731
        sessions = await _manager(tiny_models, tmp_path / "s.sqlite3", ttl_s=30.0, clock=clock)
        try:
            session = await sessions.open("tiny", "", SID, None, None, create=True)
            later[0] = 29.0  # past the local deadline (TTL less the margin), not the store's
            assert sessions.ownership is not None and not sessions.ownership.fresh(SID)
            out = await sessions.steps(session, 0, np.ones((2, 2), np.float32))
            assert out.applied == 2 and sessions.ownership.fresh(SID)
        finally:
            await _close(sessions)

    asyncio.run(drive())


def test_ending_a_session_deletes_its_store_entry(tiny_models: Path, tmp_path: Path):
    async def drive() -> None:
        sessions = await _manager(tiny_models, tmp_path / "s.sqlite3", ttl_s=5.0)
        try:
            session = await sessions.open("tiny", "", SID, None, None, create=True)
            await sessions.steps(session, 0, np.ones((2, 2), np.float32))
            assert sessions.mover is not None and await sessions.mover.checkpoint() == 1
            assert session.durable_step == 2
            store = sessions.ownership.store if sessions.ownership else None
            assert store is not None and await store.load(SID) is not None
            assert sessions.delete(SID)
            await sessions.settle_all()
            assert await store.load(SID) is None
        finally:
            await _close(sessions)

    asyncio.run(drive())


def test_a_checkpoint_writes_what_changed_since_the_last_one(tiny_models: Path, tmp_path: Path):
    async def drive() -> None:
        sessions = await _manager(tiny_models, tmp_path / "s.sqlite3", ttl_s=30.0)
        try:
            ids = [f"{SID}-{i:02d}" for i in range(5)]
            opened = [await sessions.open("tiny", "", i, None, None, create=True) for i in ids]
            mover = sessions.mover
            assert mover is not None
            assert await mover.checkpoint() == 0  # opened, never stepped: nothing to write
            for session in opened[:3]:
                await sessions.steps(session, 0, np.ones((2, 2), np.float32))
            assert await mover.checkpoint() == 3
            assert await mover.checkpoint() == 0  # written: unchanged since
            await sessions.steps(opened[1], 2, np.ones((1, 2), np.float32))
            assert await mover.checkpoint() == 1 and opened[1].durable_step == 3
            assert sessions.delete(ids[2])  # a changed session that ended is not written
            await sessions.steps(opened[0], 2, np.ones((1, 2), np.float32))
            await sessions.settle_all()
            assert await mover.checkpoint() == 1
            assert await mover.checkpoint(everything=True) == 4
        finally:
            await _close(sessions)

    asyncio.run(drive())


def test_a_checkpoint_the_store_refused_is_written_by_the_next(
    tiny_models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    async def drive() -> None:
        sessions = await _manager(tiny_models, tmp_path / "s.sqlite3", ttl_s=30.0)
        try:
            session = await sessions.open("tiny", "", SID, None, None, create=True)
            await sessions.steps(session, 0, np.ones((2, 2), np.float32))
            assert sessions.mover is not None and sessions.ownership is not None
            store = sessions.ownership.store
            before = session.durable_step

            async def unreachable(*args: object) -> list[Lease]:
                raise StoreUnavailable("session store: down for the test")

            with monkeypatch.context() as patched:
                patched.setattr(store, "checkpoint_many", unreachable)
                assert await sessions.mover.checkpoint() == 0
            assert session.durable_step == before != 2
            assert await sessions.mover.checkpoint() == 1 and session.durable_step == 2
        finally:
            await _close(sessions)

    asyncio.run(drive())


def test_a_large_checkpoint_lets_other_work_run_between_its_chunks(
    tiny_models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(moves, "CHECKPOINT_CHUNK", 4)

    async def drive() -> None:
        sessions = await _manager(tiny_models, tmp_path / "s.sqlite3", ttl_s=30.0)
        try:
            for i in range(10):
                await sessions.open("tiny", "", f"{SID}-{i:02d}", None, None, create=True)
            assert sessions.mover is not None and sessions.ownership is not None
            store = sessions.ownership.store
            calls: list[int] = []
            ticks = 0
            checkpoint_many = store.checkpoint_many

            async def counted(writes: list[tuple[Lease, object]]) -> list[Lease]:
                calls.append(ticks)
                return await checkpoint_many(writes)  # type: ignore[arg-type]

            async def ticking() -> None:
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0)

            monkeypatch.setattr(store, "checkpoint_many", counted)
            ticker = asyncio.create_task(ticking())
            await asyncio.sleep(0)
            assert await sessions.mover.checkpoint(everything=True) == 10
            ticker.cancel()
            assert len(calls) == 3  # chunks of 4, 4 and 2
            assert calls[0] < calls[1] < calls[2]  # the other task ran between chunks
        finally:
            await _close(sessions)

    asyncio.run(drive())


def test_a_session_moves_between_live_managers_in_one_hand_over(tiny_models: Path, tmp_path: Path):
    """Two managers (processes, in effect) share a store: an Open on B takes A's session."""

    async def drive() -> None:
        path = tmp_path / "s.sqlite3"
        a = await _manager(tiny_models, path, ttl_s=5.0)
        b = await _manager(tiny_models, path, ttl_s=5.0)
        movers = [m.mover for m in (a, b) if m.mover is not None]
        runs = [asyncio.create_task(mover.run(0.0)) for mover in movers]
        try:
            await asyncio.gather(*(mover.listening.wait() for mover in movers))
            x = np.random.default_rng(1).standard_normal((6, 2)).astype(np.float32)
            on_a = await a.open("tiny", "", SID, None, None, create=True)
            first = await a.steps(on_a, 0, x[:4])
            on_b = await b.open("tiny", "", SID, None, None)
            assert on_b.next_step == 4 and on_b.durable_step == 4
            # A gave its lease away before the grant reached B (no step of A applies from
            # then); dropping the session object is A's next step once its store call returns.
            assert a.ownership is not None and a.ownership.lease(SID) is None
            for _ in range(500):
                if a.find(SID) is None:
                    break
                await asyncio.sleep(0.01)
            assert a.find(SID) is None
            moved = await b.steps(on_b, 4, x[4:])
            # The same steps in one manager that never moved the session.
            alone = await _manager(tiny_models, tmp_path / "alone.sqlite3", ttl_s=5.0)
            ref = await alone.open("tiny", "", SID, None, None, create=True)
            want = await alone.steps(ref, 0, x)
            np.testing.assert_array_equal(np.concatenate([first.y, moved.y]), want.y)
            await _close(alone)
        finally:
            for run in runs:
                run.cancel()
            await asyncio.gather(*runs, return_exceptions=True)
            for m in (a, b):
                await _close(m)

    asyncio.run(drive())


def test_a_dead_holder_lets_the_session_move_once_its_lease_expires(
    tiny_models: Path, tmp_path: Path
):
    async def drive() -> None:
        path = tmp_path / "s.sqlite3"
        dead = LocalStore(path)  # holds a lease, never reads its inbox, never beats again
        await dead.heartbeat("dead-process", 0.3)
        held = await dead.acquire(SID, "dead-process", 3600.0)
        assert isinstance(held, Lease)
        sessions = await _manager(tiny_models, path, ttl_s=5.0)
        assert sessions.mover is not None
        run = asyncio.create_task(sessions.mover.run(0.0))
        try:
            await sessions.mover.listening.wait()
            session = await sessions.open("tiny", "", SID, None, None, create=True)
            assert session.next_step == 0
            assert sessions.ownership is not None and sessions.ownership.fresh(SID)
        finally:
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
            await _close(sessions)
            await dead.close()

    asyncio.run(drive())


def test_staying_alive_is_one_store_call_and_a_lapse_checks_every_lease(
    tiny_models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    async def drive() -> None:
        path = tmp_path / "s.sqlite3"
        sessions = await _manager(tiny_models, path, ttl_s=30.0)
        assert sessions.mover is not None and sessions.ownership is not None
        ownership, store = sessions.ownership, sessions.ownership.store
        try:
            ids = [f"{SID}-{i:02d}" for i in range(20)]
            for session_id in ids:
                await sessions.open("tiny", "", session_id, None, None, create=True)
            checked: list[int] = []
            renew = store.renew

            async def counted(leases: list[Lease], ttl_s: float) -> object:
                checked.append(len(leases))
                return await renew(leases, ttl_s)

            monkeypatch.setattr(store, "renew", counted)
            for _ in range(3):
                assert await ownership.keep_alive() == []
            assert checked == []  # alive all along: not one lease looked at
            # A pause past the TTL: the process lapsed, and another took one session.
            await store.close()
            with sqlite3.connect(path) as conn:
                conn.execute("UPDATE owners SET expires_at = 0")
            other = LocalStore(path)
            assert isinstance(await other.acquire(ids[3], "someone-else", 3600.0), Lease)
            assert await ownership.keep_alive() == [ids[3]]
            assert checked == [20]
            assert sessions.find(ids[3]) is None  # its session was dropped here
            assert all(ownership.fresh(i) for i in ids if i != ids[3])
            await other.close()
        finally:
            await _close(sessions)

    asyncio.run(drive())


@pytest.mark.parametrize(
    ("store", "says"),
    [("memcached://x", "is not a store this server knows"), ("redis://127.0.0.1:{port}/0", "")],
)
def test_a_store_that_cannot_be_used_is_one_line_and_a_failed_start(
    tiny_models: Path, store: str, says: str
):
    value = store.format(port=free_port())
    command = [sys.executable, "-m", "rnnstream.cli", "serve", "--models", str(tiny_models)]
    command += ["--host", "127.0.0.1", "--port", "0", "--state-dir", "", "--store", value]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if "--store" in line]
    assert len(errors) == 1 and says in errors[0], done.stderr
