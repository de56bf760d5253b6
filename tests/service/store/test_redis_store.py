"""RedisStore against a Redis that goes away and comes back."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from rnnstream.server.store import Lease, StoreUnavailable
from rnnstream.server.store.redis_store import RedisStore
from tests.conftest import free_port
from tests.service.store.conftest import stored
from tests.service.store.redis_server import RedisServer

# Far above the 1 s connect timeout: only a store that hangs fails this bound.
HANG_S = 20.0


def test_a_closed_port_is_unavailable_naming_the_url() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"

    async def main() -> None:
        async with RedisStore(url) as store:
            with pytest.raises(StoreUnavailable, match=f"session store {url}"):
                await asyncio.wait_for(store.check(), HANG_S)

    asyncio.run(main())


def test_unavailable_while_down_and_working_again_when_back(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.start()

    async def main() -> None:
        async with RedisStore(server.url) as store:
            await store.check()
            lease = await store.acquire("s", "A", 30.0)
            assert isinstance(lease, Lease)
            server.stop()
            with pytest.raises(StoreUnavailable):
                await asyncio.wait_for(store.checkpoint(lease, stored("s")), HANG_S)
            with pytest.raises(StoreUnavailable):
                await asyncio.wait_for(store.load("s"), HANG_S)
            server.start()
            await store.check()
            # Nothing persisted (--save ''): the session is free again, and the new token
            # still fences the old one.
            again = await store.acquire("s", "A", 30.0)
            assert isinstance(again, Lease) and again.token > lease.token
            await store.checkpoint(again, stored("s"))
            assert await store.load("s") is not None

    try:
        asyncio.run(main())
    finally:
        server.stop()
