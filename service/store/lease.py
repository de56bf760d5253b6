"""Leases on sessions and the small values the store's ownership calls return.

Every ``expires_at`` here is wall-clock seconds (``time.time()``) measured by the caller
when it sent the request plus the TTL: never later than the store's own deadline, so a
holder that renews before its ``expires_at`` never lets its lease lapse unnoticed.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Lease:
    """Ownership of one session until ``expires_at``; ``token`` fences every write."""

    session_id: str
    owner: str
    token: int
    expires_at: float


@dataclass(frozen=True)
class Holder:
    """Who holds a live lease on a session that ``acquire`` could not take."""

    session_id: str
    owner: str
    expires_at: float


@dataclass(frozen=True)
class Renewal:
    """What ``renew`` did: leases extended (with their new expiry) and leases lost."""

    renewed: list[Lease]
    lost: list[Lease]


@dataclass(frozen=True)
class HandoverRequest:
    """A request, delivered to a session's owner, to hand the session over to ``to_owner``."""

    session_id: str
    to_owner: str
