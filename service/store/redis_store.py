"""``RedisStore``: the session store in one Redis, shared by every replica.

Keys, under the prefix ``rnnstream:``: ``session:<id>`` the entry (with a PEXPIRE of its
idle TTL), ``lease:<id>`` the lease, ``owner:<owner>`` a live process (with a PEXPIRE of
its lease TTL), ``tokens`` the token counter. Channel
``inbox:<owner>`` carries an owner's messages (hand-over requests, grants, releases): a
JSON header, a newline, then a grant's entry bytes.
Each operation is one Lua script (``redis_scripts``), registered once and run by sha;
the ``_many`` variants send one script call per chunk of sessions (one round trip).
"""

from __future__ import annotations

import contextlib
import json
import logging
import struct
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import cast
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio
import redis.exceptions
from redis.asyncio.client import PubSub
from redis.backoff import NoBackoff
from redis.retry import Retry

from rnnstream.server.store import redis_scripts
from rnnstream.server.store.base import SessionStore, check_writes, chunks
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

log = logging.getLogger(__name__)

PREFIX = "rnnstream:"
INBOX = PREFIX + "inbox:"
OWNER = PREFIX + "owner:"
# Connections to Redis per process: enough for the store calls of many Opens at once;
# more calls than this wait for a free connection.
MAX_CONNECTIONS = 64
# How often a blocked pub/sub read wakes up (to notice a cancelled listener promptly).
_POLL_S = 1.0


class RedisStore(SessionStore):
    """The session store in Redis (``redis://HOST:PORT/DB``); see the package docstring."""

    def __init__(self, url: str, connect_timeout_s: float = 1.0, timeout_s: float = 5.0) -> None:
        self.url = url
        self._where = redacted(url)
        # One retry, at once: a pooled connection that died with a restarted Redis is
        # replaced transparently; a Redis that is down fails after one connect timeout.
        # A call that finds every connection busy waits for one (up to ``timeout_s``)
        # rather than failing: a burst of Opens or a drain's releases queue, not error.
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            url,
            max_connections=MAX_CONNECTIONS,
            timeout=timeout_s,
            socket_connect_timeout=connect_timeout_s,
            socket_timeout=timeout_s,
            retry=Retry(NoBackoff(), 1),
        )
        self._redis: redis.asyncio.Redis = redis.asyncio.Redis.from_pool(pool)
        register = self._redis.register_script
        self._heartbeat = register(redis_scripts.HEARTBEAT)
        self._acquire = register(redis_scripts.ACQUIRE)
        self._renew_many = register(redis_scripts.RENEW_MANY)
        self._checkpoint_many = register(redis_scripts.CHECKPOINT_MANY)
        self._delete = register(redis_scripts.DELETE)
        self._release_many = register(redis_scripts.RELEASE_MANY)
        self._hand_over = register(redis_scripts.HAND_OVER)

    @contextlib.contextmanager
    def _reaching(self) -> Iterator[None]:
        """Turn connection failures into StoreUnavailable naming the store."""
        try:
            yield
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as e:
            raise StoreUnavailable(f"session store {self._where}: {e}") from e

    async def check(self) -> None:
        """PING the server."""
        with self._reaching():
            await self._redis.ping()

    async def close(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()

    async def heartbeat(self, owner: str, ttl_s: float) -> bool:
        """Renew the owner's key, or make it again (see SessionStore.heartbeat)."""
        with self._reaching():
            return bool(await self._heartbeat(keys=[OWNER + owner], args=[_ms(ttl_s)]))

    async def acquire(
        self, session_id: str, owner: str, ttl_s: float, ask: bool = False
    ) -> Lease | Holder:
        """Take the lease, or ask its holder for it (see SessionStore.acquire)."""
        sent = time.time()
        with self._reaching():
            reply = await self._acquire(
                keys=[_lease_key(session_id), PREFIX + "tokens"],
                args=[owner, _ms(ttl_s), INBOX if ask else "", session_id, OWNER],
            )
        if reply[0] == 1:
            return Lease(session_id, owner, int(reply[1]), sent + ttl_s)
        return Holder(session_id, reply[1].decode(), sent + max(int(reply[2]), 0) / 1000)

    async def renew(self, leases: Sequence[Lease], ttl_s: float) -> Renewal:
        """Check leases and keep their records longer, one script call per chunk."""
        renewed: list[Lease] = []
        lost: list[Lease] = []
        for chunk in chunks(leases):
            sent = time.time()
            with self._reaching():
                extended = await self._renew_many(
                    keys=[_lease_key(lease.session_id) for lease in chunk],
                    args=[_ms(ttl_s), *(lease.token for lease in chunk)],
                )
            for lease, ok in zip(chunk, extended, strict=True):
                if ok:
                    renewed.append(Lease(lease.session_id, lease.owner, lease.token, sent + ttl_s))
                else:
                    lost.append(lease)
        return Renewal(renewed, lost)

    async def release_many(self, leases: Sequence[Lease]) -> list[Lease]:
        """Release many leases, one script call per chunk (see SessionStore.release_many)."""
        lost: list[Lease] = []
        for chunk in chunks(leases):
            with self._reaching():
                positions = await self._release_many(
                    keys=[], args=[PREFIX, INBOX, pack_releases(chunk)]
                )
            lost += [chunk[int(position) - 1] for position in positions]
        return lost

    async def delete(self, lease: Lease) -> None:
        """Delete the entry and the lease if the token is live and announce it."""
        keys = [_lease_key(lease.session_id), _entry_key(lease.session_id)]
        with self._reaching():
            done = await self._delete(keys=keys, args=[lease.token, INBOX, lease.session_id])
        if not done:
            raise LeaseLost(f"session {lease.session_id}: lease {lease.token} is no longer live")

    async def checkpoint_many(self, writes: Sequence[tuple[Lease, StoredSession]]) -> list[Lease]:
        """Conditional writes, one script call per chunk (see SessionStore.checkpoint_many)."""
        check_writes(writes)
        lost: list[Lease] = []
        for chunk in chunks(writes):
            packed = pack_writes(chunk, time.time())
            with self._reaching():
                positions = await self._checkpoint_many(keys=[], args=[PREFIX, packed])
            lost += [chunk[int(position) - 1][0] for position in positions]
        return lost

    async def load(self, session_id: str) -> StoredSession | None:
        """GET and decode the entry."""
        with self._reaching():
            # Replies are bytes: the client is made without decode_responses.
            data = cast("bytes | None", await self._redis.get(_entry_key(session_id)))
        return None if data is None else decode_entry(data)

    async def hand_over(
        self, lease: Lease, stored: StoredSession, to_owner: str, ttl_s: float
    ) -> bool:
        """Write, give the lease and send the grant in one script (see SessionStore.hand_over)."""
        check_writes([(lease, stored)])
        keys = [_lease_key(lease.session_id), _entry_key(lease.session_id), PREFIX + "tokens"]
        args: list[int | bytes | str] = [
            lease.token,
            encode_entry(stored, time.time()),
            _ms(stored.record.idle_ttl_s),
            to_owner,
            _ms(ttl_s),
            INBOX,
            lease.session_id,
        ]
        with self._reaching():
            return await self._hand_over(keys=keys, args=args) is not None

    @contextlib.asynccontextmanager
    async def inbox(self, owner: str) -> AsyncIterator[AsyncIterator[InboxMessage]]:
        """Subscribe to ``owner``'s inbox channel for the context's lifetime."""
        async with self._subscribed(INBOX + owner) as pubsub:
            yield self._messages(pubsub)

    async def _messages(self, pubsub: PubSub) -> AsyncIterator[InboxMessage]:
        while True:
            with self._reaching():
                message = await pubsub.get_message(timeout=_POLL_S)
            if message is not None:
                parsed = inbox_message(message["data"])
                if parsed is not None:
                    yield parsed

    @contextlib.asynccontextmanager
    async def _subscribed(self, channel: str) -> AsyncIterator[PubSub]:
        """A pub/sub connection subscribed to ``channel`` (confirmed) until exit."""
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        try:
            with self._reaching():
                await pubsub.subscribe(channel)
            yield pubsub
        finally:
            with contextlib.suppress(redis.exceptions.RedisError, OSError):
                await pubsub.aclose()


def inbox_message(data: bytes) -> InboxMessage | None:
    """A message from its channel bytes; None (logged) for one this server did not send."""
    header, _, payload = data.partition(b"\n")
    try:
        fields = json.loads(header)
        kind = fields["kind"]
        session_id = str(fields["session_id"])
        if kind == "request":
            return HandoverRequest(session_id, str(fields["to_owner"]))
        if kind == "released":
            return Released(session_id)
        if kind == "grant":
            return HandoverGrant(session_id, int(fields["token"]), decode_entry_or_none(payload))
    except (ValueError, KeyError, TypeError):
        pass
    log.warning("ignoring a malformed inbox message: %r", data[:100])
    return None


_WRITE_HEADER = struct.Struct("<HHIQ")


def pack_writes(writes: Sequence[tuple[Lease, StoredSession]], now: float) -> bytes:
    """The chunk as ``CHECKPOINT_MANY`` reads it: each session's lengths, ttl and bytes."""
    parts: list[bytes] = []
    for lease, stored in writes:
        session_id, token = lease.session_id.encode(), b"%d" % lease.token
        entry = encode_entry(stored, now)
        ttl_ms = _ms(stored.record.idle_ttl_s)
        parts += [_WRITE_HEADER.pack(len(session_id), len(token), len(entry), ttl_ms)]
        parts += [session_id, token, entry]
    return b"".join(parts)


_RELEASE_HEADER = struct.Struct("<HH")


def pack_releases(leases: Sequence[Lease]) -> bytes:
    """The chunk as ``RELEASE_MANY`` reads it: each lease's lengths, id and token."""
    parts: list[bytes] = []
    for lease in leases:
        session_id, token = lease.session_id.encode(), b"%d" % lease.token
        parts += [_RELEASE_HEADER.pack(len(session_id), len(token)), session_id, token]
    return b"".join(parts)


def _lease_key(session_id: str) -> str:
    return PREFIX + "lease:" + session_id


def _entry_key(session_id: str) -> str:
    return PREFIX + "session:" + session_id


def _ms(seconds: float) -> int:
    """A Redis TTL in milliseconds: at least 1 (PEXPIRE refuses 0)."""
    return max(1, round(seconds * 1000))


def redacted(url: str) -> str:
    """``url`` without its password, fit for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))
