"""Leases on sessions and the small values the store's ownership calls return.

Every ``expires_at`` here is wall-clock seconds (``time.time()``): a lease's is when its
record would be forgotten unless renewed, a holder's when its owner's liveness ends
unless it beats again. A lease is live while its owner is.
"""

from __future__ import annotations

from dataclasses import dataclass

from rnnstream.server.store.entry import StoredSession


@dataclass(frozen=True)
class Lease:
    """Ownership of one session while ``owner`` lives; ``token`` fences every write."""

    session_id: str
    owner: str
    token: int
    expires_at: float


@dataclass(frozen=True)
class Holder:
    """Who holds a live lease on a session that ``acquire`` could not take, alive until when."""

    session_id: str
    owner: str
    expires_at: float


@dataclass(frozen=True)
class Renewal:
    """What ``renew`` found: leases still held (records kept longer) and leases lost."""

    renewed: list[Lease]
    lost: list[Lease]


@dataclass(frozen=True)
class HandoverRequest:
    """Delivered to a session's owner: hand the session over to ``to_owner``, who asked."""

    session_id: str
    to_owner: str


@dataclass(frozen=True)
class HandoverGrant:
    """Delivered to the process that asked: the session's lease is its own now.

    The previous owner wrote the entry and gave the lease (``token``) in one atomic step.
    ``stored`` is that entry, so the new owner needs no load; None when it could not be
    decoded (a ``load`` then says why).
    """

    session_id: str
    token: int
    stored: StoredSession | None


@dataclass(frozen=True)
class Released:
    """Delivered to a process that asked for the session: acquire it again.

    Its owner let it go without a hand-over (drain, delete, a lost lease).
    """

    session_id: str


# What a process's inbox (``SessionStore.inbox``) delivers.
InboxMessage = HandoverRequest | HandoverGrant | Released
