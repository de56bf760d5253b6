"""The ``SessionStore`` interface: leases, fenced checkpoints, loads and hand-overs."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Self, TypeVar

from rnnstream.server.store.entry import StoredSession
from rnnstream.server.store.errors import LeaseLost
from rnnstream.server.store.lease import HandoverRequest, Holder, Lease, Renewal

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
    async def acquire(self, session_id: str, owner: str, ttl_s: float) -> Lease | Holder:
        """Take the session's lease if no other owner holds a live one, else say who does.

        A taken lease carries a token greater than any issued before for the session.
        """

    @abc.abstractmethod
    async def renew(self, leases: Sequence[Lease], ttl_s: float) -> Renewal:
        """Extend many leases in one round trip; those no longer live are lost."""

    @abc.abstractmethod
    async def release(self, lease: Lease) -> bool:
        """Give the lease up if it is still the live one; False when it was already lost."""

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
        """Delete the session's entry and its lease; raises LeaseLost (nothing deleted) if lost."""

    @abc.abstractmethod
    async def request_handover(self, session_id: str, to_owner: str) -> str | None:
        """Ask the session's live owner to hand it over to ``to_owner``.

        Returns the owner asked, or None when no live lease is held (acquire it instead).
        """

    @abc.abstractmethod
    def handover_requests(
        self, owner: str
    ) -> AbstractAsyncContextManager[AsyncIterator[HandoverRequest]]:
        """Requests addressed to ``owner``: listening from entering the context until exit."""

    @abc.abstractmethod
    async def wait_released(self, session_id: str, timeout_s: float) -> bool:
        """Wait until the session has no live lease; False if one is still held at the timeout.

        Another process may acquire the session right after it is released: the caller
        acquires and, when refused, asks again.
        """


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
