"""LocalStore specifics: the file, purging, and several processes sharing one database."""

from __future__ import annotations

import asyncio
import multiprocessing
import sqlite3
from multiprocessing.synchronize import Event
from pathlib import Path

from rnnstream.server.store import HandoverGrant, HandoverRequest, Lease
from rnnstream.server.store.local_store import LocalStore
from tests.service.store.conftest import stored

SESSIONS = [f"s{i}" for i in range(50)]


def test_the_database_is_in_wal_mode_in_the_state_dir(tmp_path: Path) -> None:
    path = tmp_path / "state" / "sessions.sqlite3"
    asyncio.run(_check(path))
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def _check(path: Path) -> None:
    async with LocalStore(path) as store:
        await store.check()


def test_purge_deletes_expired_entries_only(tmp_path: Path) -> None:
    async def main() -> int:
        async with LocalStore(tmp_path / "s.sqlite3") as store:
            short, long = (
                await store.acquire("short", "A", 30),
                await store.acquire("long", "A", 30),
            )
            assert isinstance(short, Lease) and isinstance(long, Lease)
            await store.checkpoint(short, stored("short", idle_ttl_s=0.01))
            await store.checkpoint(long, stored("long"))
            while await store.load("short") is not None:
                await asyncio.sleep(0.02)
            return await store.purge()

    assert asyncio.run(main()) == 1
    with sqlite3.connect(tmp_path / "s.sqlite3") as conn:
        assert conn.execute("SELECT session_id FROM entries").fetchall() == [("long",)]


def _race(path: Path, owner: str, start: Event, results: multiprocessing.Queue) -> None:
    async def main() -> None:
        async with LocalStore(path) as store:
            await store.check()
            await store.heartbeat(owner, 60.0)
            start.wait()
            won = []
            for session_id in SESSIONS:
                lease = await store.acquire(session_id, owner, 60.0)
                if isinstance(lease, Lease):
                    won.append(lease)
            assert await store.checkpoint_many([(w, stored(w.session_id)) for w in won]) == []
            results.put([(w.session_id, w.token) for w in won])

    asyncio.run(main())


def test_two_processes_racing_for_sessions_each_win_distinct_ones(tmp_path: Path) -> None:
    path = tmp_path / "sessions.sqlite3"
    context = multiprocessing.get_context("spawn")
    start, results = context.Event(), context.Queue()
    racers = [context.Process(target=_race, args=(path, o, start, results)) for o in "PQ"]
    for racer in racers:
        racer.start()
    try:
        start.set()
        won = results.get(timeout=120) + results.get(timeout=120)
    finally:
        for racer in racers:
            racer.join(timeout=60)
            if racer.is_alive():
                racer.kill()
                racer.join()
    assert sorted(session_id for session_id, _ in won) == sorted(SESSIONS)
    assert len({token for _, token in won}) == len(SESSIONS)
    assert [r.exitcode for r in racers] == [0, 0]


def _owner(path: Path, ready: Event) -> None:
    """Own session s, and hand it over when asked."""

    async def main() -> None:
        async with LocalStore(path) as store:
            await store.heartbeat("owner", 60.0)
            lease = await store.acquire("s", "owner", 60.0)
            assert isinstance(lease, Lease)
            await store.checkpoint(lease, stored("s", seed=1))
            async with store.inbox("owner") as messages:
                ready.set()
                async for request in messages:
                    assert request == HandoverRequest("s", "requester")
                    assert await store.hand_over(lease, stored("s", seed=7), "requester", 60.0)
                    return

    asyncio.run(main())


def test_a_session_is_handed_over_between_processes(tmp_path: Path) -> None:
    path = tmp_path / "sessions.sqlite3"
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    owner = context.Process(target=_owner, args=(path, ready))
    owner.start()

    async def main() -> None:
        async with LocalStore(path) as store, store.inbox("requester") as messages:
            held = await store.acquire("s", "requester", 60.0, ask=True)
            assert not isinstance(held, Lease) and held.owner == "owner"
            grant = await anext(messages)
            assert isinstance(grant, HandoverGrant) and grant.stored is not None
            assert grant.stored.durable_step == 17
            mine = Lease("s", "requester", grant.token, 0.0)
            await store.checkpoint(mine, stored("s", seed=8))
            back = await store.load("s")
            assert back is not None and back.durable_step == 18

    try:
        assert ready.wait(timeout=120)
        asyncio.run(main())
        owner.join(timeout=60)
        assert owner.exitcode == 0
    finally:
        if owner.is_alive():
            owner.kill()
            owner.join()


# The schema of the first release (version 1): hand-over requests had a table of their own.
_SCHEMA_1 = """
PRAGMA journal_mode=WAL;
CREATE TABLE entries (session_id TEXT PRIMARY KEY, entry BLOB NOT NULL, expires_at REAL NOT NULL);
CREATE TABLE leases (session_id TEXT PRIMARY KEY, owner TEXT NOT NULL, token INTEGER NOT NULL,
  expires_at REAL NOT NULL);
CREATE TABLE tokens (id INTEGER PRIMARY KEY CHECK (id = 0), last INTEGER NOT NULL);
INSERT INTO tokens VALUES (0, 0);
CREATE TABLE handovers (id INTEGER PRIMARY KEY AUTOINCREMENT, owner TEXT NOT NULL,
  session_id TEXT NOT NULL, to_owner TEXT NOT NULL, created_at REAL NOT NULL);
PRAGMA user_version=1;
"""


def test_a_database_of_schema_1_is_upgraded_keeping_its_sessions(tmp_path: Path) -> None:
    path = tmp_path / "sessions.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.executescript(_SCHEMA_1)

    async def write() -> None:
        # What a version-1 server left: an entry, and a lease still live.
        async with LocalStore(tmp_path / "scratch.sqlite3") as scratch:
            lease = await scratch.acquire("s", "old", 60.0)
            assert isinstance(lease, Lease)
            await scratch.checkpoint(lease, stored("s", seed=3))
        with sqlite3.connect(tmp_path / "scratch.sqlite3") as source, sqlite3.connect(path) as to:
            to.executemany(
                "INSERT INTO entries VALUES (?, ?, ?)",
                source.execute("SELECT * FROM entries").fetchall(),
            )
            to.execute("INSERT INTO leases VALUES ('s', 'old', 5, 1e300)")

    async def upgraded() -> None:
        async with LocalStore(path) as store, store.inbox("old") as to_old:
            await store.heartbeat("old", 60.0)  # the holder is alive (as a process beating)
            back = await store.load("s")
            assert back is not None and back.durable_step == 13
            held = await store.acquire("s", "new", 60.0, ask=True)
            assert not isinstance(held, Lease) and held.owner == "old"
            assert await anext(to_old) == HandoverRequest("s", "new")

    asyncio.run(write())
    asyncio.run(upgraded())
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 3
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        assert "handovers" not in tables and {"inbox", "owners"} <= tables
