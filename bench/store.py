"""Checkpoint cost per session in the session store: RedisStore and LocalStore.

Acquires a lease on each of N sessions, then checkpoints all of them with
``checkpoint_many`` (pipelined: one round trip or transaction per 1000 sessions), a few
times, and prints sessions per second and microseconds per session for each store. The
sessions are the size of ``bench-gru``'s: a state of 64 floats, 64 cached outputs.

    python -m bench.store                                  # 100k sessions, both stores
    python -m bench.store --sessions 10000 --stores local
    python -m bench.store --redis redis://127.0.0.1:6379/0  # an existing Redis (flushed!)

Without ``--redis`` it starts a private ``redis-server --save '' --appendonly no`` on a
free port and stops it at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from rnnstream.server.snapshot import SessionRecord
from rnnstream.server.store import GraphIdentity, Lease, SessionStore, StoredSession
from rnnstream.server.store.entry import encode_entry
from rnnstream.server.store.local_store import LocalStore
from rnnstream.server.store.redis_store import RedisStore

GRAPH = GraphIdentity("bench-gru", "1", "0" * 64, n_outputs=1, state_size=64)
REPLAY_STEPS = 64
# Concurrent acquires while setting up (each is its own round trip).
SETUP_CONCURRENCY = 8


def session(n: int) -> StoredSession:
    """Session ``n``: random state and replay cache of bench-gru's sizes."""
    rng = np.random.default_rng(n)
    record = SessionRecord(
        session_id=f"bench-{n:08d}",
        state=rng.standard_normal(GRAPH.state_size).astype(np.float32),
        next_step=1000 + n,
        sequence_steps=0,
        return_sequences=True,
        return_state=False,
        idle_ttl_s=3600.0,
        age_s=60.0,
        replay_start=1000 + n - REPLAY_STEPS,
        replay_y=rng.standard_normal((REPLAY_STEPS, GRAPH.n_outputs)).astype(np.float32),
        replay_states=None,
    )
    return StoredSession(record, GRAPH)


async def measure(store: SessionStore, count: int, repeats: int) -> tuple[float, list[float]]:
    """(seconds to acquire ``count`` leases, seconds per checkpoint_many of all of them)."""
    await store.check()
    sessions = [session(n) for n in range(count)]
    leases: list[Lease | None] = [None] * count
    todo = iter(range(count))

    async def acquire() -> None:
        # A few workers rather than a task per session: 100k ready tasks would stall the
        # event loop past the store's connect timeout.
        for n in todo:
            lease = await store.acquire(sessions[n].session_id, "bench", 600.0)
            if not isinstance(lease, Lease):
                raise RuntimeError(f"{sessions[n].session_id} is held by {lease.owner}")
            leases[n] = lease

    began = time.perf_counter()
    await asyncio.gather(*(acquire() for _ in range(SETUP_CONCURRENCY)))
    setup = time.perf_counter() - began
    writes = [(lease, s) for lease, s in zip(leases, sessions, strict=True) if lease]
    rounds = []
    for _ in range(repeats):
        began = time.perf_counter()
        lost = await store.checkpoint_many(writes)
        rounds.append(time.perf_counter() - began)
        if lost:
            raise RuntimeError(f"{len(lost)} leases lost during the benchmark")
    return setup, rounds


@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    """A redis-server without persistence on a free port, killed at the end."""
    executable = shutil.which("redis-server")
    if executable is None:
        raise SystemExit("redis-server is not installed: install it or pass --redis URL")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as directory:
        command = [executable, "--bind", "127.0.0.1", "--port", str(port), "--save", ""]
        command += ["--appendonly", "no", "--dir", directory]
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_for_port(port)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.kill()
            proc.wait(timeout=30)


def _wait_for_port(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"redis-server did not listen on port {port}")


async def _flushed(url: str) -> RedisStore:
    import redis.asyncio

    async with redis.asyncio.Redis.from_url(url) as client:
        await client.flushdb()
    return RedisStore(url)


def report(name: str, count: int, setup: float, rounds: list[float]) -> str:
    """One table row: the best checkpoint round is the machine's cost, the rest is noise."""
    best = min(rounds)
    return (
        f"{name:>6}  {count:>9,}  {count / setup:>12,.0f}/s  {count / best:>14,.0f}/s"
        f"  {best / count * 1e6:>8.1f} us"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.store``: print one row per store."""
    p = argparse.ArgumentParser(prog="python -m bench.store", description=__doc__)
    p.add_argument("--sessions", type=int, default=100_000, help="sessions checkpointed")
    p.add_argument("--repeats", type=int, default=3, help="checkpoint rounds (best is shown)")
    p.add_argument("--stores", default="redis,local", help="which stores, comma-separated")
    p.add_argument("--redis", default="", help="an existing Redis (its DB is flushed)")
    args = p.parse_args(argv)
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    if args.sessions < 1 or args.repeats < 1 or not set(stores) <= {"redis", "local"}:
        p.error("--sessions and --repeats take positive numbers; --stores redis and/or local")
    entry = len(encode_entry(session(0), 0.0))
    print(f"entry: {entry} bytes (state {GRAPH.state_size}, replay {REPLAY_STEPS} x 1)")
    print(f"{'store':>6}  {'sessions':>9}  {'acquire':>14}  {'checkpoint':>16}  per session")
    print("-" * 66)
    for name in stores:
        with contextlib.ExitStack() as stack:
            if name == "redis":
                url = args.redis or stack.enter_context(private_redis())
                store: SessionStore = asyncio.run(_flushed(url))
            else:
                directory = stack.enter_context(tempfile.TemporaryDirectory())
                store = LocalStore(Path(directory) / "sessions.sqlite3")
            setup, rounds = asyncio.run(_measured(store, args.sessions, args.repeats))
        print(report(name, args.sessions, setup, rounds), flush=True)
    return 0


async def _measured(store: SessionStore, count: int, repeats: int) -> tuple[float, list[float]]:
    async with store:
        return await measure(store, count, repeats)


if __name__ == "__main__":
    raise SystemExit(main())
