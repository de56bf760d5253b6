"""Leases on the sessions a process holds: taking, fencing, keeping, giving them up.

With a session store every session a process holds has a lease (owner id
``host:pid:random``). ``take`` gets one: at once when nobody holds the session, else by
asking the live owner in the same store call and waiting for what the process's inbox
delivers (``deliver``): a grant (the owner wrote the entry and gave the lease in one step,
so the new owner needs no further store call), or a release (acquire again), bounded by
the holder's liveness: a holder that neither hands over nor releases lapses.

A lease lives as long as its owner process does, and the process stays alive with one
store call however many sessions it holds (``keep_alive``, every third of the TTL): at
100,000 sessions, renewing each lease every few seconds would cost most of a core. The
process has one local deadline: the monotonic time from *before* its last heartbeat was
sent, plus the TTL, minus a margin. Past it the process may have lapsed, so no lease is
``fresh`` and the caller must ``confirm`` before applying a step. A heartbeat that finds
the process had lapsed checks every lease (``renew_all``) before any is fresh again: those
another process took meanwhile are lost, and ``on_lost`` is told. Stepping only on a fresh
lease is the fencing: a process paused past its TTL never applies another step to a
session that moved. The lease records are checked and kept longer every third of
``RECORD_TTL_S`` too, so that a dead process's records do not stay forever.

Pure bookkeeping over the store: no sessions here (``SessionManager`` decides what a lost
or handed-over lease means for its session).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from rnnstream.server.errors import Unavailable
from rnnstream.server.store import (
    HandoverGrant,
    Holder,
    Lease,
    Released,
    SessionStore,
    StoredSession,
    StoreUnavailable,
)

log = logging.getLogger(__name__)

# Of the TTL: the process counts as lapsed locally this much before the store's deadline.
FENCE_MARGIN = 0.2
# How long a lease record stays unless checked again: it bounds how long the records of a
# process that died stay in the store (its leases end with it at once: this is not fencing).
RECORD_TTL_S = 3600.0
# Hand-over rounds before a move is refused: each waits at most one lease TTL.
TAKE_ROUNDS = 3
# Past the holder's deadline, wait this much longer for its lapse to show.
EXPIRY_SLACK_S = 0.05

# What a stream of a session that moved away is told: ended, and refused.
MOVED_AWAY = "the session moved to another server process"
MOVED = MOVED_AWAY + ": resume it"


def new_owner_id() -> str:
    """``host:pid:random``: unique per process, readable in the store."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


@dataclass(frozen=True)
class Taken:
    """A lease taken by ``Ownership.take``; ``stored`` is the entry a hand-over carried."""

    lease: Lease
    stored: StoredSession | None = None


def unreachable(exc: StoreUnavailable) -> Unavailable:
    """The UNAVAILABLE a client gets when the session store cannot be reached."""
    return Unavailable(f"the session store cannot be reached ({exc}): retry shortly")


class Ownership:
    """The leases this process holds and its liveness; see the module docstring."""

    def __init__(
        self,
        store: SessionStore,
        ttl_s: float,
        owner: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.owner = owner or new_owner_id()
        self.clock = clock
        # Told the ids of sessions whose leases were found lost (they moved away).
        self.on_lost: Callable[[list[str]], None] | None = None
        self._leases: dict[str, Lease] = {}
        # Leases held again after a hand-over that may or may not have happened: each is
        # checked before its next step.
        self._unconfirmed: set[str] = set()
        self._deadline = float("-inf")
        self._next_records_check = float("-inf")
        self._beating = asyncio.Lock()
        # Sessions asked for, each with the future its grant or release resolves.
        self._waiting: dict[str, asyncio.Future[HandoverGrant | Released]] = {}

    def __len__(self) -> int:
        """How many leases are held."""
        return len(self._leases)

    def lease(self, session_id: str) -> Lease | None:
        """The lease held on the session, if any."""
        return self._leases.get(session_id)

    def alive(self) -> bool:
        """Whether this process is surely still alive in the store (its leases live)."""
        return self.clock() < self._deadline

    def fresh(self, session_id: str) -> bool:
        """Whether the session's lease is held and surely still live (a step may apply)."""
        return (
            session_id in self._leases
            and session_id not in self._unconfirmed
            and self.clock() < self._deadline
        )

    def _keep(self, lease: Lease) -> None:
        self._leases[lease.session_id] = lease
        self._unconfirmed.discard(lease.session_id)

    def keep_unconfirmed(self, lease: Lease) -> None:
        """Hold ``lease`` again, not fresh: the next step checks it first (a hand-over undone)."""
        self._leases[lease.session_id] = lease
        self._unconfirmed.add(lease.session_id)

    def forget(self, session_id: str) -> Lease | None:
        """Stop counting the session as held here (no step applies from now); its lease."""
        self._unconfirmed.discard(session_id)
        return self._leases.pop(session_id, None)

    async def keep_alive(self) -> list[str]:
        """Beat once; check every lease after a lapse or when the records are due.

        Returns the ids of the sessions whose leases were lost (``on_lost`` is told too).
        Raises StoreUnavailable when the store cannot be reached.
        """
        async with self._beating:
            return await self._beat()

    async def _beat(self) -> list[str]:
        sent = self.clock()
        continuous = await self.store.heartbeat(self.owner, self.ttl_s)
        lost: list[str] = []
        if not continuous or sent >= self._next_records_check:
            if not continuous and self._leases:
                log.warning("this process lapsed in the session store: checking its leases")
            self._next_records_check = sent + RECORD_TTL_S / 3
            lost = await self.renew_all()
        self._deadline = sent + self.ttl_s * (1 - FENCE_MARGIN)
        return lost

    async def _revive(self) -> None:
        """Beat now unless this process is surely alive (one beat for every caller)."""
        if self.alive():
            return
        async with self._beating:
            if not self.alive():
                await self._beat()

    async def take(self, session_id: str) -> Taken:
        """Acquire the session's lease, asking its live owner to hand it over if needed.

        Raises Unavailable when the store cannot be reached or the owner neither hands the
        session over nor lets its lease go.
        """
        held = self._leases.get(session_id)
        if held is not None:
            return Taken(held)
        if session_id in self._waiting:
            raise RuntimeError(f"session {session_id} is already being taken here")
        loop = asyncio.get_running_loop()
        try:
            await self._revive()  # a lease taken by a lapsed owner would not be live
            for _ in range(TAKE_ROUNDS):
                # Waiting before asking: the answer may overtake the reply to the ask.
                answer = self._waiting[session_id] = loop.create_future()
                sent_wall = time.time()
                acquired = await self.store.acquire(session_id, self.owner, RECORD_TTL_S, ask=True)
                if isinstance(acquired, Lease):
                    self._keep(acquired)
                    return Taken(acquired)
                message = await self._answer(answer, acquired)
                if isinstance(message, HandoverGrant):
                    lease = Lease(session_id, self.owner, message.token, sent_wall + RECORD_TTL_S)
                    self._keep(lease)
                    return Taken(lease, message.stored)
        except StoreUnavailable as exc:
            raise unreachable(exc) from exc
        finally:
            self._waiting.pop(session_id, None)
        raise Unavailable(
            f"session {session_id} is held by another server process that did not hand it "
            "over: retry shortly"
        )

    async def _answer(
        self, answer: asyncio.Future[HandoverGrant | Released], holder: Holder
    ) -> HandoverGrant | Released | None:
        """The holder's grant or release, or None once its lease must have expired."""
        log.debug(
            "asked %s to hand session over",
            holder.owner,
            extra={"session_id": holder.session_id, "event": "handover_request"},
        )
        wait_s = max(holder.expires_at - time.time(), 0.0) + EXPIRY_SLACK_S
        try:
            return await asyncio.wait_for(answer, min(wait_s, self.ttl_s + EXPIRY_SLACK_S))
        except TimeoutError:
            return None

    def deliver(self, message: HandoverGrant | Released) -> None:
        """An inbox message for a session being taken here; ignored when none is."""
        answer = self._waiting.get(message.session_id)
        if answer is not None and not answer.done():
            answer.set_result(message)

    async def confirm(self, session_id: str) -> bool:
        """Make the session's lease fresh if it is still held; False when it was lost.

        Beats first when this process may have lapsed, and checks a lease held again
        after an undone hand-over. Raises StoreUnavailable when the store cannot be
        reached (the lease is kept, not fresh: no step applies until this works).
        """
        await self._revive()
        lease = self._leases.get(session_id)
        if lease is not None and session_id in self._unconfirmed:
            await self._renew([lease])
        return self.fresh(session_id)

    async def renew_all(self) -> list[str]:
        """Check every lease (keeping its record longer); the ids of those lost."""
        return await self._renew(list(self._leases.values()))

    async def _renew(self, leases: list[Lease]) -> list[str]:
        if not leases:
            return []
        renewal = await self.store.renew(leases, RECORD_TTL_S)
        lost: list[str] = []
        for lease in renewal.renewed:
            if self._holds(lease):  # not replaced meanwhile (forgotten, taken again)
                self._keep(lease)
        for lease in renewal.lost:
            if self._holds(lease):
                self.forget(lease.session_id)
                lost.append(lease.session_id)
        if lost and self.on_lost is not None:
            self.on_lost(lost)
        return lost

    def _holds(self, lease: Lease) -> bool:
        """Whether ``lease`` (by its token) is the one held on its session here."""
        current = self._leases.get(lease.session_id)
        return current is not None and current.token == lease.token

    async def give_up(self, lease: Lease) -> None:
        """Stop holding ``lease`` here (no step applies) and release it in the store."""
        self.forget(lease.session_id)
        await self.release(lease)

    async def release(self, lease: Lease) -> None:
        """Give a lease up in the store (best effort: an unreleased lease expires)."""
        try:
            await self.store.release(lease)
        except StoreUnavailable as exc:
            log.warning("could not release session %s: %s", lease.session_id, exc)

    async def release_all(self) -> int:
        """Give every held lease up (at drain), a chunk per store call; how many were held.

        Best effort: leases the store could not be told about end with this process's
        heartbeat, at most one TTL later.
        """
        leases = list(self._leases.values())
        self._leases.clear()
        self._unconfirmed.clear()
        try:
            await self.store.release_many(leases)
        except StoreUnavailable as exc:
            log.warning("could not release %d leases: %s", len(leases), exc)
        return len(leases)
