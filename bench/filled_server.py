"""``rnnstream serve`` that holds N sessions before it says it serves; SIGUSR1 flushes.

Filling a server with sessions over gRPC costs about 3.4 ms of CPU per session on a
two-core machine (a new stream, an Open whose lease is a Redis round trip, a Steps, the
half-close): 100,000 sessions would take minutes per server. This process builds the
same ``Server`` from the same flags as ``rnnstream serve``, then opens ``--fill``
sessions through its ``SessionManager`` (``open``: a new id, its lease taken in the
store) and steps each once, a few at a time: what an Open and a Steps do, less the
gRPC, with a progress line on stdout every few seconds. Only then does it log its
``serving ... on HOST:PORT`` line.

SIGUSR1 checkpoints every session at once while serving, with the call a drain makes
(``SessionMover.checkpoint(everything=True)``); SIGTERM drains and exits, as
``rnnstream serve`` does.

    python -m bench.filled_server serve --store redis://127.0.0.1:6379/0 --port 0 --fill 1000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import signal
import sys
import time
from collections.abc import Iterator, Sequence

import numpy as np

from rnnstream.server import logs
from rnnstream.server.cli import add_parser
from rnnstream.server.server import STOP_SIGNALS, Server
from rnnstream.server.server import log as server_log
from rnnstream.server.settings import Settings

log = logging.getLogger("bench.filled_server")

# Sessions opened at once: each Open waits for its lease's round trip to Redis.
CONCURRENCY = 32
PROGRESS_S = 5.0


async def fill(server: Server, count: int) -> None:
    """Open ``count`` new sessions of the default model and step each once."""
    sessions = server.sessions
    loaded = server.repository.get("", "")
    x = np.full((1, loaded.manifest.n_features), 0.5, dtype=np.float32)
    todo = iter(range(count))
    made = 0

    async def worker() -> None:
        nonlocal made
        for _ in todo:
            session = await sessions.open(loaded.manifest.name, "", "", True, None)
            await sessions.steps(session, session.next_step, x)
            made += 1

    async def progress() -> None:
        began = time.perf_counter()
        while True:
            await asyncio.sleep(PROGRESS_S)
            rate = made / (time.perf_counter() - began)
            print(f"[fill {time.strftime('%H:%M:%S')}] {made:,}/{count:,} sessions ({rate:,.0f}/s)")
            sys.stdout.flush()

    reporter = asyncio.create_task(progress())
    try:
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    finally:
        reporter.cancel()


async def flush(server: Server) -> None:
    """Checkpoint every session (as a drain does) and log how many and how long."""
    mover = server.sessions.mover
    if mover is None:
        log.warning("SIGUSR1 ignored: no --store, nothing to checkpoint to")
        return
    loop = asyncio.get_running_loop()
    began = loop.time()
    written = await mover.checkpoint(everything=True)
    log.info("flush: %d sessions checkpointed in %.3fs", written, loop.time() - began)


@contextlib.contextmanager
def quiet_start() -> Iterator[None]:
    """Hold back the server's own ``serving`` line until the sessions are in."""
    level = server_log.level
    server_log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        server_log.setLevel(level)


async def serve(settings: Settings, count: int) -> int:
    """Start, fill, say so, serve until SIGTERM or SIGINT (SIGUSR1: flush), then drain."""
    server = Server(settings)
    with quiet_start():
        await server.start()
    try:
        await fill(server, count)
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        flushes: set[asyncio.Task[None]] = set()

        def start_flush() -> None:
            task = asyncio.create_task(flush(server))
            flushes.add(task)
            task.add_done_callback(flushes.discard)

        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, stopping.set)
        loop.add_signal_handler(signal.SIGUSR1, start_flush)
        log.info("serving %d sessions on %s", count, server.address)
        await stopping.wait()
    finally:
        await server.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.filled_server serve [rnnstream serve flags] --fill N``."""
    parser = argparse.ArgumentParser(prog="python -m bench.filled_server", description=__doc__)
    subparsers = parser.add_subparsers(required=True)
    add_parser(subparsers)
    serve_parser = subparsers.choices["serve"]
    serve_parser.add_argument("--fill", type=int, default=0, help="sessions to hold at start")
    args = parser.parse_args(argv)
    fields = {f.name for f in dataclasses.fields(Settings)}
    settings = Settings.from_env(**{k: v for k, v in vars(args).items() if k in fields})
    logs.configure(settings.log_level, settings.log_format, settings.worker)
    return asyncio.run(serve(settings, args.fill))


if __name__ == "__main__":
    sys.exit(main())
