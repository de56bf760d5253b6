"""Leases on the sessions a process holds: taking, fencing, renewing, giving them up.

With a session store every session a process holds has a lease (owner id
``host:pid:random``). ``take`` gets one: at once when nobody holds the session, else by
asking the live owner in the same store call and waiting for what the process's inbox
delivers (``deliver``): a grant (the owner wrote the entry and gave the lease in one step,
so the new owner needs no further store call), or a release (acquire again), bounded by
the holder's lease: a lease that is neither handed over nor released expires.

Each lease has a local deadline: the monotonic time from *before* the acquire or renew
was sent, plus the TTL (a grant's, when shorter), minus a margin. Past it this process
may no longer own the session, so ``fresh`` is False and the caller must ``renew_one``
before applying a step; a lease found lost means the session moved. Stepping only on a
fresh lease is the fencing: a process paused past its TTL never applies another step.

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

# Of the TTL: a lease counts as expired locally this much before the store's deadline.
FENCE_MARGIN = 0.2
# Hand-over rounds before a move is refused: each waits at most one lease TTL.
TAKE_ROUNDS = 3
# Past the holder's lease deadline, wait this much longer for its expiry to show.
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
    """The leases this process holds, with their local deadlines; see the module docstring."""

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
        self._leases: dict[str, Lease] = {}
        self._deadlines: dict[str, float] = {}
        # Sessions asked for, each with the future its grant or release resolves.
        self._waiting: dict[str, asyncio.Future[HandoverGrant | Released]] = {}

    def __len__(self) -> int:
        """How many leases are held."""
        return len(self._leases)

    def lease(self, session_id: str) -> Lease | None:
        """The lease held on the session, if any."""
        return self._leases.get(session_id)

    def fresh(self, session_id: str) -> bool:
        """Whether the session's lease is held and surely still live (a step may apply)."""
        deadline = self._deadlines.get(session_id)
        return deadline is not None and self.clock() < deadline

    def _keep(self, lease: Lease, sent: float, ttl_s: float | None = None) -> None:
        self._leases[lease.session_id] = lease
        ttl = self.ttl_s if ttl_s is None else min(ttl_s, self.ttl_s)
        self._deadlines[lease.session_id] = sent + ttl * (1 - FENCE_MARGIN)

    def keep_unconfirmed(self, lease: Lease) -> None:
        """Hold ``lease`` again, not fresh: the next step renews it first (a hand-over undone)."""
        self._leases[lease.session_id] = lease
        self._deadlines[lease.session_id] = float("-inf")

    def forget(self, session_id: str) -> Lease | None:
        """Stop counting the session as held here (no step applies from now); its lease."""
        self._deadlines.pop(session_id, None)
        return self._leases.pop(session_id, None)

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
            for _ in range(TAKE_ROUNDS):
                # Waiting before asking: the answer may overtake the reply to the ask.
                answer = self._waiting[session_id] = loop.create_future()
                sent, sent_wall = self.clock(), time.time()
                acquired = await self.store.acquire(session_id, self.owner, self.ttl_s, ask=True)
                if isinstance(acquired, Lease):
                    self._keep(acquired, sent)
                    return Taken(acquired)
                message = await self._answer(answer, acquired)
                if isinstance(message, HandoverGrant):
                    # The grant was made after the ask was sent: ``sent`` bounds the lease.
                    lease = Lease(session_id, self.owner, message.token, sent_wall + message.ttl_s)
                    self._keep(lease, sent, message.ttl_s)
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

    async def renew_one(self, session_id: str) -> bool:
        """Renew one lease now; False when it was lost (forgotten here then).

        Raises StoreUnavailable when the store cannot be reached (the lease is kept: it
        may still be live, but it is not fresh, so no step applies until a renewal works).
        """
        lease = self._leases.get(session_id)
        if lease is None:
            return False
        return not await self._renew([lease])

    async def renew_all(self) -> list[str]:
        """Renew every lease in one call; the ids of those lost (forgotten here)."""
        return await self._renew(list(self._leases.values()))

    async def _renew(self, leases: list[Lease]) -> list[str]:
        if not leases:
            return []
        sent = self.clock()
        renewal = await self.store.renew(leases, self.ttl_s)
        lost: list[str] = []
        for lease in renewal.renewed:
            if self._holds(lease):  # not replaced meanwhile (forgotten, taken again)
                self._keep(lease, sent)
        for lease in renewal.lost:
            if self._holds(lease):
                self.forget(lease.session_id)
                lost.append(lease.session_id)
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
        """Give every held lease up (at drain); how many were held."""
        leases = list(self._leases.values())
        self._leases.clear()
        self._deadlines.clear()
        for start in range(0, len(leases), 256):
            await asyncio.gather(*(self.release(lease) for lease in leases[start : start + 256]))
        return len(leases)
