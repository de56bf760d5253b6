"""The ``SessionStore`` interface: leases, fenced checkpoints, loads and hand-overs."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Self, TypeVar

from rnnstream.server.store.entry import StoredSession
from rnnstream.server.store.errors import LeaseLost
from rnnstream.server.store.lease import Holder, InboxMessage, Lease, Renewal

# Sessions per pipeline or transaction in the ``_many`` calls: short enough that the event
# loop (encoding) and other processes (waiting for the write lock) are held up briefly.
CHUNK = 1000

_T = TypeVar("_T")


class SessionStore(abc.ABC):
    """Where sessions live between steps, shared by every process that serves them.

    See the package docstring for the contract. Every method is a coroutine that never
    blocks the event loop; connection failures raise ``StoreUnavailable``.
    """

    @abc.abstractmethod
    async def check(self) -> None:
        """Verify the store is reachable and ready; raises StoreUnavailable saying why not."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections and threads; the store is not used afterwards."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @abc.abstractmethod
    async def heartbeat(self, owner: str, ttl_s: float) -> bool:
        """Keep ``owner`` alive for ``ttl_s`` more: every lease it holds lives as long.

        True when ``owner`` stayed alive since its last heartbeat, so every lease it held
        then is still its own. False when it had lapsed (or never beat): it is alive again
        from now, but others may have taken some of its sessions meanwhile; ``renew`` its
        leases to learn which it still holds.
        """

    @abc.abstractmethod
    async def acquire(
        self, session_id: str, owner: str, ttl_s: float, ask: bool = False
    ) -> Lease | Holder:
        """Take the session's lease if no other live owner holds it, else say who does.

        A lease is live while its owner is (``heartbeat``); its record is kept ``ttl_s``
        (renewed by ``renew``), so a dead owner's records do not stay forever.
        A taken lease carries a token greater than any issued before for the session.
        With ``ask``, a refusal also asks the holder, in the same atomic step, to hand the
        session over to ``owner``: the holder's inbox gets a ``HandoverRequest``, and
        ``owner``'s inbox later gets a ``HandoverGrant``, or ``Released`` when the holder
        lets the session go without one.
        """

    @abc.abstractmethod
    async def renew(self, leases: Sequence[Lease], ttl_s: float) -> Renewal:
        """Check many leases are still held, keeping their records ``ttl_s`` more.

        Those another owner took (or whose record is gone) are lost.
        """

    async def release(self, lease: Lease) -> bool:
        """Give the lease up if it is still the live one; False when it was already lost.

        A process that asked for the session gets ``Released``.
        """
        return not await self.release_many([lease])

    @abc.abstractmethod
    async def release_many(self, leases: Sequence[Lease]) -> list[Lease]:
        """Give many leases up in one round trip per chunk; returns those already lost.

        Each process that asked for one of the sessions gets ``Released``.
        """

    async def checkpoint(self, lease: Lease, stored: StoredSession) -> None:
        """Write one session under its lease; raises LeaseLost (nothing written) if lost."""
        if await self.checkpoint_many([(lease, stored)]):
            raise LeaseLost(f"session {lease.session_id}: lease {lease.token} is no longer live")

    @abc.abstractmethod
    async def checkpoint_many(self, writes: Sequence[tuple[Lease, StoredSession]]) -> list[Lease]:
        """Write many sessions, each only if its lease is still live; returns the leases lost.

        Each entry then expires its record's ``idle_ttl_s`` after this write.
        """

    @abc.abstractmethod
    async def load(self, session_id: str) -> StoredSession | None:
        """The stored session, or None; raises StoreEntryError when the entry is corrupt."""

    @abc.abstractmethod
    async def delete(self, lease: Lease) -> None:
        """Delete the session's entry and its lease; raises LeaseLost (nothing deleted) if lost.

        A process that asked for the session gets ``Released``.
        """

    @abc.abstractmethod
    async def hand_over(
        self, lease: Lease, stored: StoredSession, to_owner: str, ttl_s: float
    ) -> bool:
        """Write the entry and give the lease to ``to_owner``, in one atomic step.

        ``to_owner`` then holds a new lease (a greater token, its record kept ``ttl_s``) and its
        inbox gets a ``HandoverGrant`` carrying the entry; any other process that asked
        for the session gets ``Released``. False (nothing written) when ``lease`` was lost.
        """

    @abc.abstractmethod
    def inbox(self, owner: str) -> AbstractAsyncContextManager[AsyncIterator[InboxMessage]]:
        """Messages addressed to ``owner``, from entering the context until exit."""


def check_writes(writes: Sequence[tuple[Lease, StoredSession]]) -> None:
    """Refuse a write whose lease is for another session than its entry (a caller's bug)."""
    for lease, stored in writes:
        if lease.session_id != stored.session_id:
            raise ValueError(
                f"lease of session {lease.session_id} cannot write session {stored.session_id}"
            )


def chunks(items: Sequence[_T]) -> Iterator[Sequence[_T]]:
    """``items`` in consecutive slices of at most ``CHUNK``."""
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]
