"""Checkpoint cost at 100k sessions: msg/s with checkpoints off, every 1 s, every 0.2 s.

Starts a private ``redis-server`` (or uses ``--redis``) and one server per variant
(``--snapshot-interval-s`` 0, 1 and 0.2), each on its own Redis database and each
holding N idle sessions, stepped once each (``bench.filled_server``: ``rnnstream serve
--store`` that opens them itself before it serves, since filling over gRPC takes
minutes). Then it runs the same lock-step load (``rnnstream.loadgen``: S streams, each
on a session of its own, one step per message) against each variant in turn, ``--reps``
times, rotating the order so that drift in the machine's load falls on every variant
alike. The servers not measured are paused (SIGSTOP; leases of ``--lease-ttl-s`` 60
outlast the pause), so only the measured one runs. Only the sessions stepped since the
last checkpoint are dirty: the load's S, while the N sit idle.

The worst case, every session written at once: the ``off`` server is sent SIGUSR1, which
checkpoints all its sessions (none was ever written) with the call a drain makes. A
probe stream steps one session every few milliseconds meanwhile: its longest reply is
how long the event loop was blocked; the flush lasts from the signal to the last entry
appearing in Redis (polled with DBSIZE). Last, each server's SIGTERM-to-exit time (its
drain checkpoints every session and releases every lease) is printed.

    python -m bench.checkpoint                       # 100k sessions, 1024 streams, 3 reps
    python -m bench.checkpoint --sessions 10000 --streams 64 --reps 2 --duration-s 2
    python -m bench.checkpoint --redis redis://127.0.0.1:6379/0   # uses DBs 0-2 (flushed!)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import signal
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import grpc
import redis.asyncio

from bench.harness.machine import describe
from bench.harness.progress import say
from bench.moves import Replica, replica
from bench.store import private_redis
from rnnstream import loadgen
from rnnstream.v1 import rnnstream_pb2 as pb
from rnnstream.v1 import rnnstream_pb2_grpc as pb_grpc

MODEL = "seattle-temp"
# Variants: name, --snapshot-interval-s (0: checkpoints off).
VARIANTS = (("off", 0.0), ("every 1 s", 1.0), ("every 0.2 s", 0.2))
# Long enough that pausing a server for the other variants' runs loses no lease.
LEASE_TTL_S = 60.0
PROGRESS_S = 5.0
PROBE_PAUSE_S = 0.005
CALM_S = 1.0
DBSIZE_POLL_S = 0.01
# The flush is over once Redis has had no new entry for this long.
FLUSH_QUIET_S = 5.0


@dataclass
class Cell:
    """The runs of one variant."""

    name: str
    interval_s: float
    results: list[loadgen.LoadResult] = field(default_factory=list)


@dataclass
class Flush:
    """One checkpoint of every session at once, seen from outside the server."""

    written: int  # entries that appeared in Redis
    seconds: float  # from the signal to the last entry
    probe_max_ms: float  # the probe's longest reply during the flush
    probe_p50_ms: float  # its median reply outside the flush
    probe_stalls: int  # probe replies during the flush slower than 10x that median


def serve_flags(sessions: int, streams: int, interval_s: float) -> list[str]:
    """The ``serve`` flags of every server here, with its checkpoint interval."""
    return [
        "--fill",
        str(sessions),
        "--snapshot-interval-s",
        f"{interval_s:g}",
        "--max-sessions",
        str(sessions + 2 * streams + 16),
        "--idle-ttl-s",
        "3600",
        "--lease-ttl-s",
        f"{LEASE_TTL_S:g}",
    ]


def database(url: str, db: int) -> str:
    """``url`` with its database number replaced: each process keeps its keys apart."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{db}"))


async def flushed(url: str) -> None:
    """Empty the database of ``url``."""
    async with redis.asyncio.Redis.from_url(url) as client:
        await client.flushdb()


async def _n_features(stub: pb_grpc.PredictorAsyncStub) -> int:
    listing = await stub.ListModels(pb.ListModelsRequest(), timeout=30, wait_for_ready=True)
    return next(int(m.n_features) for m in listing.models if m.name == MODEL)


async def _open(stub: pb_grpc.PredictorAsyncStub) -> tuple[Any, int]:
    """A stream with a new session on it: the call and the session's next step."""
    call: Any = stub.Stream()  # type: ignore[call-arg]  # aio: no request iterator
    await call.write(pb.StreamRequest(open=pb.Open(model=MODEL)))
    reply = await call.read()
    if reply is loadgen.GRPC_EOF or reply.WhichOneof("kind") != "opened":
        raise loadgen.LoadError(f"expected Opened, got {reply}")
    return call, int(reply.opened.next_step)


async def _step(call: Any, start: int, x: list[float]) -> None:
    await call.write(pb.StreamRequest(steps=pb.Steps(start=start, x=x)))
    reply = await call.read()
    if reply is loadgen.GRPC_EOF or reply.WhichOneof("kind") != "outputs":
        raise loadgen.LoadError(f"expected Outputs, got {reply}")


@contextlib.contextmanager
def paused(pids: Sequence[int]) -> Iterator[None]:
    """SIGSTOP the processes for the block's lifetime, so that they take no CPU."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def load(server: Replica, args: argparse.Namespace, label: str) -> loadgen.LoadResult:
    """One lock-step run against ``server``."""
    spec = loadgen.LoadSpec(
        target=server.address,
        streams=args.streams,
        duration_s=args.duration_s,
        warmup_s=1.0,
        model=MODEL,
        server_pid=server.pid,
        label=label,
    )
    return loadgen.run(spec, loadgen.RnnstreamProtocol())


async def watch_flush(server: Replica, redis_url: str, expected: int) -> Flush:
    """Flush every session of ``server`` (SIGUSR1) while probing it and watching Redis."""
    channel = grpc.aio.insecure_channel(server.address)
    replies: list[tuple[float, float]] = []  # (sent, seconds to the reply)
    stop = asyncio.Event()
    probing = asyncio.Event()

    async def probe() -> None:
        stub = pb_grpc.PredictorStub(channel)
        x = [0.5] * await _n_features(stub)
        call, start = await _open(stub)
        probing.set()
        while not stop.is_set():
            sent = time.perf_counter()
            await _step(call, start, x)
            replies.append((sent, time.perf_counter() - sent))
            start += 1
            await asyncio.sleep(PROBE_PAUSE_S)
        call.cancel()

    async with redis.asyncio.Redis.from_url(redis_url) as client:
        prober = asyncio.create_task(probe())
        try:
            await probing.wait()
            await asyncio.sleep(CALM_S)  # the probe's replies before the flush
            baseline = await client.dbsize()
            os.kill(server.pid, signal.SIGUSR1)
            due = time.perf_counter()
            last_size, last_growth = baseline, due
            # Bound: a thousand sessions a second at the very least.
            deadline = due + 60.0 + expected / 1000
            while time.perf_counter() < deadline:
                await asyncio.sleep(DBSIZE_POLL_S)
                size = await client.dbsize()
                now = time.perf_counter()
                if size > last_size:
                    last_size, last_growth = size, now
                # Before its first write the flush takes every record: no quiet rule yet.
                quiet = last_size > baseline and now - last_growth > FLUSH_QUIET_S
                if size - baseline >= expected or quiet:
                    break
        finally:
            stop.set()
            await asyncio.gather(prober, return_exceptions=True)
            await channel.close(None)
    during = [took for sent, took in replies if due <= sent + took and sent <= last_growth]
    calm = [took for sent, took in replies if sent + took < due] or [math.nan]
    p50 = statistics.median(calm)
    return Flush(
        written=last_size - baseline,
        seconds=last_growth - due,
        probe_max_ms=max(during, default=math.nan) * 1e3,
        probe_p50_ms=p50 * 1e3,
        probe_stalls=sum(took > 10 * p50 for took in during),
    )


def stop_timed(stack: contextlib.ExitStack) -> float:
    """Seconds to close ``stack`` (a replica's SIGTERM, drain and exit)."""
    began = time.perf_counter()
    stack.close()
    return time.perf_counter() - began


def table(cells: Sequence[Cell]) -> list[str]:
    """The load's rows: median msg/s with its spread, the ratio to ``off``, p99, CPU."""
    lines = [
        f"{'checkpoints':<12} {'msg/s median':>12} {'min - max':>17} {'ratio':>6}"
        f" {'p99 ms':>7} {'server CPU us/msg':>18}  errors",
        "-" * 86,
    ]
    base = statistics.median(r.msg_per_s for r in cells[0].results)
    for cell in cells:
        rates = [r.msg_per_s for r in cell.results]
        median = statistics.median(rates)
        p99 = statistics.median(r.latency_us["p99"] for r in cell.results) / 1e3
        cpu = statistics.median(r.server_cpu_us_per_msg or math.nan for r in cell.results)
        errors = sum(r.errors for r in cell.results)
        lines.append(
            f"{cell.name:<12} {median:>12,.0f} {min(rates):>8,.0f} - {max(rates):>6,.0f}"
            f" {median / base:>6.3f} {p99:>7.1f} {cpu:>18.0f}  {errors}"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.checkpoint``: print the table and the flush."""
    p = argparse.ArgumentParser(
        prog="python -m bench.checkpoint",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--sessions", type=int, default=100_000, help="idle sessions per server")
    p.add_argument("--streams", type=int, default=1024, help="lock-step streams of the load")
    p.add_argument("--duration-s", type=float, default=5.0, help="measured seconds per run")
    p.add_argument("--reps", type=int, default=3, help="runs per variant, interleaved")
    p.add_argument("--redis", default="", help="an existing Redis (DBs 0-2 are flushed!)")
    args = p.parse_args(argv)
    if min(args.sessions, args.streams, args.reps) < 1 or not args.duration_s > 0:
        p.error("--sessions, --streams, --reps and --duration-s take positive numbers")
    machine = describe()
    say(f"machine: {machine['cpu']}, {machine['cores']} cores, load {machine['loadavg_at_start']}")
    cells = [Cell(name, interval) for name, interval in VARIANTS]
    with contextlib.ExitStack() as stack:
        url = args.redis or stack.enter_context(private_redis())
        servers: list[Replica] = []
        stops: list[contextlib.ExitStack] = []
        for db, cell in enumerate(cells):
            db_url = database(url, db)
            asyncio.run(flushed(db_url))
            own = stack.enter_context(contextlib.ExitStack())
            flags = serve_flags(args.sessions, args.streams, cell.interval_s)
            began = time.perf_counter()
            say(f"starting the {cell.name} server; it opens {args.sessions:,} sessions first")
            servers.append(own.enter_context(replica(db_url, *flags, module="bench.filled_server")))
            say(f"{cell.name}: {args.sessions:,} sessions in {time.perf_counter() - began:.1f}s")
            stops.append(own)
        for rep in range(args.reps):
            for i in range(len(cells)):
                turn = (rep + i) % len(cells)
                cell, server = cells[turn], servers[turn]
                with paused([s.pid for s in servers if s is not server]):
                    result = load(server, args, cell.name)
                cell.results.append(result)
                say(
                    f"rep {rep + 1}/{args.reps} {cell.name}: {result.msg_per_s:,.0f} msg/s, "
                    f"p99 {result.latency_us['p99'] / 1e3:.1f} ms, {result.errors} errors"
                )
        off = servers[0]  # checkpoints off: none of its sessions was ever written
        say(f"flush: every session of the {cells[0].name} server at once")
        with paused([s.pid for s in servers if s is not off]):
            flush = asyncio.run(watch_flush(off, database(url, 0), args.sessions + 1))
        drains = [stop_timed(own) for own in stops]
    print(
        f"\n{args.sessions:,} idle sessions per server; lock-step load of {args.streams} "
        f"streams x 1 step, {args.duration_s:g}s x {args.reps} reps per variant (interleaved)"
    )
    print(f"machine: {machine['cpu']}, {machine['cores']} cores")
    print("\n".join(table(cells)))
    print(
        f"\nfull flush: {flush.written:,} sessions written in {flush.seconds:.2f}s "
        f"({flush.written / max(flush.seconds, 1e-9):,.0f}/s); event loop blocked up to "
        f"{flush.probe_max_ms:,.0f} ms (the probe's longest reply; {flush.probe_stalls} replies "
        f"over 10x its idle median of {flush.probe_p50_ms:.2f} ms)"
    )
    print(
        f"drain (SIGTERM to exit: checkpoints and releases {args.sessions:,} sessions): "
        + ", ".join(f"{cell.name} {s:.1f}s" for cell, s in zip(cells, drains, strict=True))
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
