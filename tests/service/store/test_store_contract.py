"""The session store contract, run alike against RedisStore (real redis-server) and LocalStore."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import numpy as np
import pytest

from rnnstream.server.store import (
    HandoverGrant,
    HandoverRequest,
    Holder,
    Lease,
    LeaseLost,
    Released,
    SessionStore,
    StoredSession,
    StoreEntryError,
)
from tests.service.store.conftest import Backend, stored


def run(backend: Backend, test: Callable[[SessionStore], Awaitable[None]]) -> None:
    async def main() -> None:
        async with backend.open() as store:
            await store.check()
            await test(store)

    asyncio.run(main())


# How long lease records are kept here (long: they are not what ends a lease).
RECORD_TTL_S = 3600.0


async def take(store: SessionStore, session_id: str, owner: str, ttl_s: float = 30.0) -> Lease:
    """``owner`` beats (alive for ``ttl_s``) and acquires the session."""
    await store.heartbeat(owner, ttl_s)
    lease = await store.acquire(session_id, owner, RECORD_TTL_S)
    assert isinstance(lease, Lease), lease
    return lease


async def take_when_free(store: SessionStore, session_id: str, owner: str) -> Lease:
    """Acquire once the current holder has lapsed (polls; bounded by the test timeout)."""
    await store.heartbeat(owner, 30.0)
    while not isinstance(lease := await store.acquire(session_id, owner, RECORD_TTL_S), Lease):
        await asyncio.sleep(0.02)
    return lease


def assert_same(a: StoredSession, b: StoredSession) -> None:
    assert a.graph == b.graph
    ra, rb = a.record, b.record
    assert ra.state.tobytes() == rb.state.tobytes()
    assert (ra.next_step, ra.sequence_steps, ra.replay_start) == (
        rb.next_step,
        rb.sequence_steps,
        rb.replay_start,
    )
    assert ra.replay_y is not None and rb.replay_y is not None
    assert ra.replay_y.tobytes() == rb.replay_y.tobytes()


def test_acquire_renew_release(backend: Backend) -> None:
    async def test(store: SessionStore) -> None:
        lease = await take(store, "s", "A")
        assert lease.owner == "A" and lease.session_id == "s"
        held = await store.acquire("s", "B", RECORD_TTL_S)
        assert isinstance(held, Holder) and held.owner == "A"
        assert time.time() + 25.0 < held.expires_at <= time.time() + 30.0  # A's liveness
        renewal = await store.renew([lease], 2 * RECORD_TTL_S)
        assert renewal.lost == [] and [r.token for r in renewal.renewed] == [lease.token]
        assert renewal.renewed[0].expires_at > lease.expires_at
        assert await store.release(lease)
        assert not await store.release(lease)
        assert (await store.renew([lease], RECORD_TTL_S)).lost == [lease]
        after = await take(store, "s", "B")
        assert after.token > lease.token

    run(backend, test)


def test_a_heartbeat_says_whether_the_owner_stayed_alive(backend: Backend) -> None:
    async def test(store: SessionStore) -> None:
        assert not await store.heartbeat("A", 0.1)  # never beat before
        assert await store.heartbeat("A", 0.1)
        await asyncio.sleep(0.2)
        assert not await store.heartbeat("A", 30.0)  # lapsed meanwhile
        assert await store.heartbeat("A", 30.0)

    run(backend, test)


def test_a_lapsed_owner_keeps_the_leases_nobody_took_and_loses_the_others(
    backend: Backend,
) -> None:
    async def test(store: SessionStore) -> None:
        kept = await take(store, "kept", "A", ttl_s=0.1)
        taken = await take(store, "taken", "A", ttl_s=0.1)
        held = await store.acquire("kept", "B", RECORD_TTL_S)
        assert isinstance(held, Holder) and held.owner == "A"  # alive: nobody may take it
        await asyncio.sleep(0.2)  # A lapses (a pause); B takes one of its sessions
        assert isinstance(await take(store, "taken", "B"), Lease)
        assert not await store.heartbeat("A", 30.0)
        renewal = await store.renew([kept, taken], RECORD_TTL_S)
        assert [lease.session_id for lease in renewal.renewed] == ["kept"]
        assert renewal.lost == [taken]
        await store.checkpoint(kept, stored("kept"))  # alive again: its leases are live
        held = await store.acquire("kept", "B", RECORD_TTL_S)
        assert isinstance(held, Holder) and held.owner == "A"

    run(backend, test)


def test_tokens_strictly_increase_across_owners_and_after_expiry(backend: Backend) -> None:
    async def test(store: SessionStore) -> None:
        tokens = [(await take(store, "s", "A", ttl_s=0.05)).token]
        tokens.append((await take_when_free(store, "s", "B")).token)
        # The owner re-acquiring its own live lease gets a fresh token too.
        tokens.append((await take(store, "s", "B")).token)
        tokens.append((await take(store, "other", "A")).token)
        assert tokens == sorted(set(tokens))

    run(backend, test)


def test_a_paused_old_owner_cannot_write(backend: Backend) -> None:
    async def test(store: SessionStore) -> None:
        a = await take(store, "s", "A", ttl_s=0.1)
        await store.checkpoint(a, stored("s", seed=1))
        # A pauses past its TTL; B takes over and writes.
        b = await take_when_free(store, "s", "B")
        await store.checkpoint(b, stored("s", seed=2))
        with pytest.raises(LeaseLost):
            await store.checkpoint(a, stored("s", seed=3))
        assert await store.checkpoint_many([(a, stored("s", seed=3))]) == [a]
        with pytest.raises(LeaseLost):
            await store.delete(a)
        assert not await store.release(a)
        assert (await store.renew([a, b], RECORD_TTL_S)).lost == [a]
        back = await store.load("s")
        assert back is not None
        assert_same(back, stored("s", seed=2))
        assert back.durable_step == 12

    run(backend, test)


def test_checkpoint_many_of_1000_sessions(backend: Backend) -> None:
    ids = [f"s{i}" for i in range(1000)]

    async def test(store: SessionStore) -> None:
        leases = [await take(store, i, "A") for i in ids]
        released = leases[::100]
        for lease in released:
            assert await store.release(lease)
        writes = [(lease, stored(lease.session_id, seed=n)) for n, lease in enumerate(leases)]
        assert await store.checkpoint_many(writes) == released
        for n, session_id in enumerate(ids):
            back = await store.load(session_id)
            if n % 100 == 0:
                assert back is None
            else:
                assert back is not None
                assert_same(back, stored(session_id, seed=n))

    run(backend, test)


def test_entries_expire_their_idle_ttl_after_the_last_checkpoint(backend: Backend) -> None:
    async def test(store: SessionStore) -> None:
        short, long = await take(store, "short", "A"), await take(store, "long", "A")
        await store.checkpoint_many(
            [(short, stored("short", idle_ttl_s=0.1)), (long, stored("long", idle_ttl_s=3600))]
        )
        kept = await store.load("long")
        assert kept is not None and kept.checkpointed_at is not None
        assert kept.expires_at == pytest.approx(kept.checkpointed_at + 3600)
        while await store.load("short") is not None:
            await asyncio.sleep(0.02)
        assert await store.load("long") is not None

    run(backend, test)


def test_delete_removes_entry_and_lease(backend: Backend) -> None:
    async def test(store: SessionStore) -> None:
        lease = await take(store, "s", "A")
        await store.checkpoint(lease, stored("s"))
        await store.delete(lease)
        assert await store.load("s") is None
        assert isinstance(await store.acquire("s", "B", RECORD_TTL_S), Lease)

    run(backend, test)


def test_an_ask_reaches_the_holder_whose_hand_over_grants_the_lease_with_the_entry(
    backend: Backend,
) -> None:
    async def test(store: SessionStore) -> None:
        async with store.inbox("A") as to_a, store.inbox("B") as to_b:
            lease = await take(store, "s", "A")
            await store.heartbeat("B", 30.0)
            held = await store.acquire("s", "B", RECORD_TTL_S, ask=True)
            assert isinstance(held, Holder) and held.owner == "A"
            assert await anext(to_a) == HandoverRequest("s", "B")
            assert await store.hand_over(lease, stored("s", seed=4), "B", RECORD_TTL_S)
            grant = await anext(to_b)
            assert isinstance(grant, HandoverGrant) and grant.session_id == "s"
            assert grant.token > lease.token
            assert grant.stored is not None
            assert_same(grant.stored, stored("s", seed=4))
            # The lease is B's now: A is fenced off, B writes and renews under the grant.
            assert not await store.hand_over(lease, stored("s", seed=5), "C", RECORD_TTL_S)
            assert await store.checkpoint_many([(lease, stored("s", seed=5))]) == [lease]
            mine = Lease("s", "B", grant.token, 0.0)
            assert (await store.renew([mine], RECORD_TTL_S)).lost == []
            await store.checkpoint(mine, stored("s", seed=6))
            held = await store.acquire("s", "A", RECORD_TTL_S)
            assert isinstance(held, Holder) and held.owner == "B"
        back = await store.load("s")
        assert back is not None and back.durable_step == 16

    run(backend, test)


def test_a_release_or_delete_tells_the_asker(backend: Backend) -> None:
    async def test(store: SessionStore) -> None:
        async with store.inbox("B") as to_b:
            released, deleted = await take(store, "r", "A"), await take(store, "d", "A")
            await store.heartbeat("B", 30.0)
            for session_id in ("r", "d"):
                asked = await store.acquire(session_id, "B", RECORD_TTL_S, ask=True)
                assert isinstance(asked, Holder)
            assert await store.release(released)
            assert await anext(to_b) == Released("r")
            await store.delete(deleted)
            assert await anext(to_b) == Released("d")
        assert isinstance(await store.acquire("r", "B", RECORD_TTL_S), Lease)

    run(backend, test)


def test_only_an_ask_sends_a_request_and_a_hand_over_releases_the_other_asker(
    backend: Backend,
) -> None:
    async def test(store: SessionStore) -> None:
        async with store.inbox("A") as to_a, store.inbox("C") as to_c:
            lease = await take(store, "s", "A")
            assert isinstance(await store.acquire("s", "B", RECORD_TTL_S), Holder)  # not asking
            assert isinstance(await store.acquire("s", "B", RECORD_TTL_S, ask=True), Holder)
            assert isinstance(await store.acquire("s", "C", RECORD_TTL_S, ask=True), Holder)
            assert await anext(to_a) == HandoverRequest("s", "B")
            assert await anext(to_a) == HandoverRequest("s", "C")
            assert await store.hand_over(lease, stored("s"), "B", RECORD_TTL_S)
            assert await anext(to_c) == Released("s")  # C asks B next

    run(backend, test)


def test_release_many_gives_up_the_live_leases_and_tells_their_askers(backend: Backend) -> None:
    async def test(store: SessionStore) -> None:
        async with store.inbox("B") as to_b:
            leases = [await take(store, f"s{i}", "A", ttl_s=0.2) for i in range(5)]
            await store.heartbeat("B", 30.0)
            assert isinstance(await store.acquire("s1", "B", RECORD_TTL_S, ask=True), Holder)
            await asyncio.sleep(0.3)  # A lapses; C takes s3 meanwhile
            taken = await take(store, "s3", "C")
            await store.heartbeat("A", 30.0)
            assert await store.release_many(leases) == [leases[3]]
            assert await anext(to_b) == Released("s1")
            for i in (0, 1, 2, 4):  # free now, and A is alive: released, not lapsed
                assert isinstance(await store.acquire(f"s{i}", "B", RECORD_TTL_S), Lease)
            held = await store.acquire("s3", "B", RECORD_TTL_S)
            assert isinstance(held, Holder) and held.owner == "C"
            assert await store.release_many([taken]) == []

    run(backend, test)


def test_a_corrupt_entry_raises_store_entry_error(backend: Backend) -> None:
    async def test(store: SessionStore) -> None:
        lease = await take(store, "s", "A")
        await store.checkpoint(lease, stored("s"))
        good = await store.load("s")
        assert good is not None
        backend.plant("bad", b"RNSS\x01\x00garbage")
        with pytest.raises(StoreEntryError, match="shorter than its header"):
            await store.load("bad")
        backend.plant("foreign", b"\x80\x04\x95" + bytes(200))  # a pickle, say
        with pytest.raises(StoreEntryError, match="not a session entry"):
            await store.load("foreign")
        # The store is still usable afterwards.
        back = await store.load("s")
        assert back is not None and np.array_equal(back.record.state, good.record.state)

    run(backend, test)
