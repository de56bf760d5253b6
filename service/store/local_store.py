"""``LocalStore``: the session store in one SQLite file, shared by a machine's processes.

``<state_dir>/sessions.sqlite3`` in WAL mode: readers never wait for the writer, and each
write is a ``BEGIN IMMEDIATE`` transaction, so the lease compare and the write it guards
are atomic across processes. ``synchronous=NORMAL``: a committed write survives any
process crash (not necessarily a power cut). Every call runs in a worker thread, so the
event loop never waits for the disk or for another process's transaction.

Idle expiry: each entry and lease row holds its deadline; reads ignore rows past it and
writers purge them every ``PURGE_EVERY_S``. A process is alive while its ``owners`` row's
deadline is ahead (``heartbeat`` moves it); a lease is live while its owner is, and a lease
row's own deadline (long) only bounds how long a dead owner's rows stay.

Messages between processes (hand-over requests, grants with their entry, releases) are
rows of ``inbox``, written in the same transaction as the lease change they announce; a
lease row names its ``asker``, the last process that asked for it. SQLite cannot notify
another process, so a listener polls every ``poll_s`` (20 ms): one indexed read that takes
no lock and writes nothing, so it never delays a checkpoint. A writer that puts a message
in an inbox also rings the addressee's doorbell once it commits (``doorbell``), which
wakes that listener at once. A listener sees messages sent after it started listening;
rows are purged after ``INBOX_KEEP_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

from rnnstream.server.store.base import SessionStore, check_writes, chunks
from rnnstream.server.store.doorbell import Bell, Ringer
from rnnstream.server.store.entry import (
    StoredSession,
    decode_entry,
    decode_entry_or_none,
    encode_entry,
)
from rnnstream.server.store.errors import LeaseLost, StoreUnavailable
from rnnstream.server.store.lease import (
    HandoverGrant,
    HandoverRequest,
    Holder,
    InboxMessage,
    Lease,
    Released,
    Renewal,
)

FILE_NAME = "sessions.sqlite3"
SCHEMA_VERSION = 3
PURGE_EVERY_S = 10.0
INBOX_KEEP_S = 60.0

_T = TypeVar("_T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
  session_id TEXT PRIMARY KEY, entry BLOB NOT NULL, expires_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS entries_expiry ON entries (expires_at);
CREATE TABLE IF NOT EXISTS leases (
  session_id TEXT PRIMARY KEY, owner TEXT NOT NULL, token INTEGER NOT NULL,
  expires_at REAL NOT NULL, asker TEXT);
CREATE INDEX IF NOT EXISTS leases_expiry ON leases (expires_at);
CREATE TABLE IF NOT EXISTS owners (owner TEXT PRIMARY KEY, expires_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (id INTEGER PRIMARY KEY CHECK (id = 0), last INTEGER NOT NULL);
INSERT OR IGNORE INTO tokens VALUES (0, 0);
CREATE TABLE IF NOT EXISTS inbox (
  id INTEGER PRIMARY KEY AUTOINCREMENT, to_owner TEXT NOT NULL, kind TEXT NOT NULL,
  session_id TEXT NOT NULL, sender TEXT NOT NULL, token INTEGER, entry BLOB,
  created_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS inbox_owner ON inbox (to_owner, id);
"""

# From schema 1: leases name their asker, and an inbox replaces hand-over request rows.
# (From schema 2, ``_SCHEMA`` adds the owners table: leases then live with their owner.)
_MIGRATE_FROM_1 = """
ALTER TABLE leases ADD COLUMN asker TEXT;
DROP TABLE IF EXISTS handovers;
"""

_LIVE_LEASE = "SELECT owner, token, expires_at FROM leases WHERE session_id = ? AND expires_at > ?"
_LIVE_LEASE_ASKER = "SELECT token, asker FROM leases WHERE session_id = ? AND expires_at > ?"
_OWNER_ALIVE_UNTIL = "SELECT expires_at FROM owners WHERE owner = ? AND expires_at > ?"


class LocalStore(SessionStore):
    """The session store in ``<state_dir>/sessions.sqlite3``; see the module docstring."""

    def __init__(self, path: Path, busy_timeout_s: float = 5.0, poll_s: float = 0.02) -> None:
        self.path = path
        self.busy_timeout_s = busy_timeout_s
        self.poll_s = poll_s
        self._conn: sqlite3.Connection | None = None
        # One connection per store, used by one worker thread at a time.
        self._lock = threading.Lock()
        self._next_purge = 0.0
        self._ringer = Ringer(str(path.expanduser().resolve()))

    async def _run(self, operation: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``operation`` on the connection in a worker thread."""
        return await asyncio.to_thread(self._locked, operation)

    def _locked(self, operation: Callable[[sqlite3.Connection], _T]) -> _T:
        with self._lock:
            try:
                if self._conn is None:
                    self._conn = self._connect()
                return operation(self._conn)
            except (sqlite3.IntegrityError, sqlite3.ProgrammingError):
                raise
            except (sqlite3.DatabaseError, OSError) as e:
                raise StoreUnavailable(f"session store {self.path}: {e}") from e

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.path, timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            with self._writing(conn):
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version not in (0, 1, 2, SCHEMA_VERSION):
                    raise StoreUnavailable(
                        f"session store {self.path} has schema {version}, "
                        f"this server uses {SCHEMA_VERSION}"
                    )
                script = (_MIGRATE_FROM_1 if version == 1 else "") + _SCHEMA
                for statement in script.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except BaseException:
            conn.close()
            raise
        return conn

    async def check(self) -> None:
        """Open (creating if needed) the database and purge what expired."""
        await self._run(self._purge)

    async def close(self) -> None:
        """Close the connection."""
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            self._ringer.close()

    @contextlib.contextmanager
    def _writing(self, conn: sqlite3.Connection) -> Iterator[list[str]]:
        """A write transaction that takes the database's write lock at once.

        It yields a list for the owners whose inbox it writes to: their doorbells ring
        once the transaction commits.
        """
        bells: list[str] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield bells
        except BaseException:
            if conn.in_transaction:
                conn.rollback()
            raise
        conn.execute("COMMIT")
        self._ringer.ring(bells)

    async def purge(self) -> int:
        """Delete expired entries and leases and old inbox messages; returns entries deleted."""
        return await self._run(self._purge)

    def _purge(self, conn: sqlite3.Connection) -> int:
        now = time.time()
        self._next_purge = now + PURGE_EVERY_S
        with self._writing(conn):
            purged = conn.execute("DELETE FROM entries WHERE expires_at <= ?", (now,)).rowcount
            conn.execute("DELETE FROM leases WHERE expires_at <= ?", (now,))
            conn.execute("DELETE FROM owners WHERE expires_at <= ?", (now - INBOX_KEEP_S,))
            conn.execute("DELETE FROM inbox WHERE created_at <= ?", (now - INBOX_KEEP_S,))
        return int(purged)

    async def heartbeat(self, owner: str, ttl_s: float) -> bool:
        """Move the owner's deadline, or write its row again (see SessionStore.heartbeat)."""

        def heartbeat(conn: sqlite3.Connection) -> bool:
            now = time.time()
            with self._writing(conn):
                alive = conn.execute(
                    "UPDATE owners SET expires_at = ? WHERE owner = ? AND expires_at > ?",
                    (now + ttl_s, owner, now),
                ).rowcount
                if not alive:
                    conn.execute(
                        "INSERT OR REPLACE INTO owners VALUES (?, ?)", (owner, now + ttl_s)
                    )
            return alive == 1

        return await self._run(heartbeat)

    async def acquire(
        self, session_id: str, owner: str, ttl_s: float, ask: bool = False
    ) -> Lease | Holder:
        """Take the lease, or ask its holder for it (see SessionStore.acquire)."""

        def acquire(conn: sqlite3.Connection) -> Lease | Holder:
            now = time.time()
            with self._writing(conn) as bells:
                held = conn.execute(_LIVE_LEASE, (session_id, now)).fetchone()
                alive = None
                if held is not None and held[0] != owner:
                    alive = conn.execute(_OWNER_ALIVE_UNTIL, (held[0], now)).fetchone()
                if held is not None and alive is not None:
                    if ask:
                        conn.execute(
                            "UPDATE leases SET asker = ? WHERE session_id = ?", (owner, session_id)
                        )
                        _notify(conn, bells, held[0], "request", session_id, owner, now)
                    return Holder(session_id, held[0], float(alive[0]))
                token = _new_token(conn, now)
                _grant(conn, session_id, owner, token, now + ttl_s)
            return Lease(session_id, owner, token, now + ttl_s)

        return await self._run(acquire)

    async def renew(self, leases: Sequence[Lease], ttl_s: float) -> Renewal:
        """Check leases and keep their rows longer, one transaction per chunk."""

        def renew(chunk: Sequence[Lease], conn: sqlite3.Connection) -> Renewal:
            now = time.time()
            renewed: list[Lease] = []
            lost: list[Lease] = []
            with self._writing(conn):
                for lease in chunk:
                    if _extend(conn, lease, now, ttl_s):
                        renewed.append(
                            Lease(lease.session_id, lease.owner, lease.token, now + ttl_s)
                        )
                    else:
                        lost.append(lease)
            return Renewal(renewed, lost)

        renewals = [await self._run(functools.partial(renew, chunk)) for chunk in chunks(leases)]
        return Renewal(
            [lease for r in renewals for lease in r.renewed],
            [lease for r in renewals for lease in r.lost],
        )

    async def release_many(self, leases: Sequence[Lease]) -> list[Lease]:
        """Delete many lease rows, one transaction per chunk (see SessionStore.release_many)."""

        def release(chunk: Sequence[Lease], conn: sqlite3.Connection) -> list[Lease]:
            now = time.time()
            with self._writing(conn) as bells:
                return [lease for lease in chunk if not _drop_lease(conn, bells, lease, now)]

        lost: list[Lease] = []
        for chunk in chunks(leases):
            lost += await self._run(functools.partial(release, chunk))
        return lost

    async def delete(self, lease: Lease) -> None:
        """Delete the entry and the lease if the token is live."""

        def delete(conn: sqlite3.Connection) -> bool:
            with self._writing(conn) as bells:
                if not _drop_lease(conn, bells, lease, time.time()):
                    return False
                conn.execute("DELETE FROM entries WHERE session_id = ?", (lease.session_id,))
            return True

        if not await self._run(delete):
            raise LeaseLost(f"session {lease.session_id}: lease {lease.token} is no longer live")

    async def checkpoint_many(self, writes: Sequence[tuple[Lease, StoredSession]]) -> list[Lease]:
        """Conditional writes, one transaction per chunk (see SessionStore.checkpoint_many)."""
        check_writes(writes)

        def checkpoint(
            chunk: Sequence[tuple[Lease, StoredSession]], conn: sqlite3.Connection
        ) -> list[Lease]:
            now = time.time()
            if now >= self._next_purge:
                self._purge(conn)
            rows = [(lease, encode_entry(stored, now), stored) for lease, stored in chunk]
            lost: list[Lease] = []
            with self._writing(conn):
                for lease, data, stored in rows:
                    if _live_token(conn, lease.session_id, now) != lease.token:
                        lost.append(lease)
                        continue
                    conn.execute(
                        "INSERT OR REPLACE INTO entries VALUES (?, ?, ?)",
                        (lease.session_id, data, now + stored.record.idle_ttl_s),
                    )
            return lost

        lost: list[Lease] = []
        for chunk in chunks(writes):
            lost += await self._run(functools.partial(checkpoint, chunk))
        return lost

    async def load(self, session_id: str) -> StoredSession | None:
        """Read and decode the entry, unless it expired."""

        def load(conn: sqlite3.Connection) -> StoredSession | None:
            row = conn.execute(
                "SELECT entry FROM entries WHERE session_id = ? AND expires_at > ?",
                (session_id, time.time()),
            ).fetchone()
            return None if row is None else decode_entry(bytes(row[0]))

        return await self._run(load)

    async def hand_over(
        self, lease: Lease, stored: StoredSession, to_owner: str, ttl_s: float
    ) -> bool:
        """Write, give the lease and send the grant in one transaction (see SessionStore)."""
        check_writes([(lease, stored)])

        def hand_over(conn: sqlite3.Connection) -> bool:
            now = time.time()
            data = encode_entry(stored, now)
            with self._writing(conn) as bells:
                row = conn.execute(_LIVE_LEASE_ASKER, (lease.session_id, now)).fetchone()
                if row is None or int(row[0]) != lease.token:
                    return False
                conn.execute(
                    "INSERT OR REPLACE INTO entries VALUES (?, ?, ?)",
                    (lease.session_id, data, now + stored.record.idle_ttl_s),
                )
                token = _new_token(conn, now)
                _grant(conn, lease.session_id, to_owner, token, now + ttl_s)
                conn.execute(
                    "INSERT INTO inbox (to_owner, kind, session_id, sender, token, entry, "
                    "created_at) VALUES (?, 'grant', ?, ?, ?, ?, ?)",
                    (to_owner, lease.session_id, lease.owner, token, data, now),
                )
                bells.append(to_owner)
                if row[1] is not None and row[1] != to_owner:
                    _notify(conn, bells, row[1], "released", lease.session_id, lease.owner, now)
            return True

        return await self._run(hand_over)

    @contextlib.asynccontextmanager
    async def inbox(self, owner: str) -> AsyncIterator[AsyncIterator[InboxMessage]]:
        """Poll for messages to ``owner`` sent after entering the context."""

        def last_id(conn: sqlite3.Connection) -> int:
            return int(conn.execute("SELECT coalesce(max(id), 0) FROM inbox").fetchone()[0])

        with Bell(self._ringer.scope, owner) as bell:
            yield self._messages(owner, await self._run(last_id), bell)

    async def _messages(self, owner: str, after: int, bell: Bell) -> AsyncIterator[InboxMessage]:
        def newer(conn: sqlite3.Connection) -> list[tuple[int, str, str, str, int, bytes]]:
            return conn.execute(
                "SELECT id, kind, session_id, sender, token, entry FROM inbox "
                "WHERE to_owner = ? AND id > ? ORDER BY id",
                (owner, after),
            ).fetchall()

        while True:
            for row_id, kind, session_id, sender, token, entry in await self._run(newer):
                after = row_id
                if kind == "request":
                    yield HandoverRequest(session_id, sender)
                elif kind == "grant":
                    yield HandoverGrant(session_id, int(token), decode_entry_or_none(bytes(entry)))
                else:
                    yield Released(session_id)
            await bell.wait(self.poll_s)


def _clock_us(now: float) -> int:
    """A new token's floor, the clock in microseconds: above old tokens even in a new file."""
    return int(now * 1_000_000)


def _live_token(conn: sqlite3.Connection, session_id: str, now: float) -> int | None:
    row = conn.execute(_LIVE_LEASE, (session_id, now)).fetchone()
    return None if row is None else int(row[1])


def _extend(conn: sqlite3.Connection, lease: Lease, now: float, ttl_s: float) -> bool:
    cursor = conn.execute(
        "UPDATE leases SET expires_at = ? WHERE session_id = ? AND token = ? AND expires_at > ?",
        (now + ttl_s, lease.session_id, lease.token, now),
    )
    return cursor.rowcount == 1


def _drop_lease(conn: sqlite3.Connection, bells: list[str], lease: Lease, now: float) -> bool:
    """Delete the lease if its token is live, telling its asker; False when it was lost."""
    row = conn.execute(
        "DELETE FROM leases WHERE session_id = ? AND token = ? AND expires_at > ? RETURNING asker",
        (lease.session_id, lease.token, now),
    ).fetchone()
    if row is None:
        return False
    if row[0] is not None:
        _notify(conn, bells, row[0], "released", lease.session_id, lease.owner, now)
    return True


def _new_token(conn: sqlite3.Connection, now: float) -> int:
    """A token greater than every one issued before."""
    row = conn.execute(
        "UPDATE tokens SET last = max(last + 1, ?) RETURNING last", (_clock_us(now),)
    ).fetchone()
    return int(row[0])


def _grant(conn: sqlite3.Connection, session_id: str, owner: str, token: int, until: float) -> None:
    """The session's lease row: ``owner`` holds it under ``token`` until ``until``."""
    conn.execute(
        "INSERT OR REPLACE INTO leases (session_id, owner, token, expires_at) VALUES (?, ?, ?, ?)",
        (session_id, owner, token, until),
    )


def _notify(
    conn: sqlite3.Connection,
    bells: list[str],
    to: str,
    kind: str,
    session_id: str,
    sender: str,
    now: float,
) -> None:
    """An inbox message without an entry (a hand-over request or a release); ring ``to``."""
    bells.append(to)
    conn.execute(
        "INSERT INTO inbox (to_owner, kind, session_id, sender, created_at) VALUES (?, ?, ?, ?, ?)",
        (to, kind, session_id, sender, now),
    )
