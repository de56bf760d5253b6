"""Doorbells: a ring wakes the addressee's inbox reader without waiting for its poll."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from rnnstream.server.store import HandoverRequest, Lease
from rnnstream.server.store.doorbell import Bell, Ringer, supported
from rnnstream.server.store.local_store import LocalStore

# Far longer than any test may take: a reader that returns did not wait for its poll.
POLL_S = 3600.0

pytestmark = pytest.mark.skipif(not supported(), reason="abstract Unix sockets are Linux-only")


def test_a_ring_wakes_the_bell_of_that_owner_only() -> None:
    async def main() -> None:
        ringer = Ringer("/some/store")
        with Bell("/some/store", "A") as a, Bell("/other/store", "A") as elsewhere:
            ringer.ring(["A", "nobody-listens"])
            await asyncio.wait_for(a.wait(POLL_S), 10)
            waiting = asyncio.create_task(elsewhere.wait(POLL_S))
            await asyncio.sleep(0.05)
            assert not waiting.done()
            waiting.cancel()
        ringer.ring(["A"])  # nobody listens any more: skipped, no error
        ringer.close()

    asyncio.run(main())


def test_a_second_bell_for_one_owner_falls_back_to_polling() -> None:
    async def main() -> None:
        ringer = Ringer("/s")
        with Bell("/s", "A") as first, Bell("/s", "A") as second:
            ringer.ring(["A"])
            await asyncio.wait_for(first.wait(POLL_S), 10)
            await asyncio.wait_for(second.wait(0.01), 10)  # its poll, not the ring
        ringer.close()

    asyncio.run(main())


def test_local_store_messages_arrive_by_the_bell_not_the_poll(tmp_path: Path) -> None:
    async def main() -> None:
        path = tmp_path / "s.sqlite3"
        async with LocalStore(path, poll_s=POLL_S) as owner, LocalStore(path) as asker:
            await owner.heartbeat("A", 30.0)
            lease = await owner.acquire("s", "A", 3600.0)
            assert isinstance(lease, Lease)
            async with owner.inbox("A") as to_a:
                await asker.acquire("s", "B", 3600.0, ask=True)
                request = await asyncio.wait_for(anext(to_a), 10)
                assert request == HandoverRequest("s", "B")

    asyncio.run(main())
