"""Time of the Open that moves a session between two live server processes sharing a store.

Starts a private ``redis-server`` (or uses ``--redis``; or, with ``--store local``, a
temporary state directory whose SQLite store both share, as the workers of one machine
do) and two ``rnnstream serve --store`` processes on the bundled models, creates N
sessions on the first (Open.create with client ids, a few steps each), then moves every
session to the other process and back, ``--rounds`` times. Each move is a resuming Open
on a new stream of the process that does not hold the session: its one store call asks
the owner, which writes the entry and gives the lease to it in one more (the entry comes
with the grant). Prints p50 and p99 of the time from sending that Open to receiving
Opened.

    python -m bench.moves                       # 200 sessions, 3 rounds
    python -m bench.moves --sessions 50 --rounds 1
    python -m bench.moves --store local         # the local store (SQLite) instead of Redis
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import cast

import grpc
import numpy as np

from bench.store import private_redis
from rnnstream.server.settings import bundled_models_dir
from rnnstream.v1 import rnnstream_pb2 as pb
from rnnstream.v1 import rnnstream_pb2_grpc as pb_grpc

MODEL = "seattle-temp"
STEPS_PER_VISIT = 4


@dataclass(frozen=True)
class Replica:
    """A started ``rnnstream serve --store`` process: where it serves, and its pid."""

    address: str
    pid: int


@contextlib.contextmanager
def replica(
    store: str, *extra: str, state_dir: str = "", module: str = "rnnstream.cli"
) -> Iterator[Replica]:
    """An ``rnnstream serve --store`` process on a free port. Stopped at the end.

    ``extra`` are more ``serve`` flags (``--snapshot-interval-s 1``); ``module`` is the
    program whose ``serve`` runs (``python -m MODULE serve ...``).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("RNNSTREAM_")}
    command = [
        sys.executable,
        "-m",
        module,
        "serve",
        "--models",
        str(bundled_models_dir()),
    ]
    command += ["--host", "127.0.0.1", "--port", "0", "--state-dir", state_dir, "--store", store]
    command += extra
    proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    try:
        address = _serving_address(proc)
        drain = threading.Thread(target=lambda: [None for _ in proc.stderr or ()], daemon=True)
        drain.start()
        yield Replica(address, proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def _serving_address(proc: subprocess.Popen[str]) -> str:
    """Wait for the ``serving ... on HOST:PORT`` line."""
    assert proc.stderr is not None
    for line in proc.stderr:
        match = re.search(r"serving .* on (127\.0\.0\.1:\d+)", line)
        if match:
            return match.group(1)
    raise RuntimeError("the server exited before serving")


def visit(stub: pb_grpc.PredictorStub, session_id: str, rng: np.random.Generator) -> float:
    """Open the session on ``stub``'s process, send a few steps; seconds Open took."""
    requests: queue.Queue[pb.StreamRequest | None] = queue.Queue()
    call = stub.Stream(iter(requests.get, None), timeout=60)
    answers = cast(Iterator[pb.StreamResponse], call)
    began = time.perf_counter()
    requests.put(pb.StreamRequest(open=pb.Open(model=MODEL, session_id=session_id, create=True)))
    opened = next(answers).opened
    took = time.perf_counter() - began
    x = rng.standard_normal(STEPS_PER_VISIT).astype(np.float32)
    requests.put(pb.StreamRequest(steps=pb.Steps(start=opened.next_step, x=x.tolist())))
    next(answers)
    requests.put(None)
    for _ in answers:
        pass
    return took


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print p50/p99 of the moving Open."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3, help="moves there and back per session")
    parser.add_argument("--redis", default="", help="an existing Redis (default: a private one)")
    parser.add_argument(
        "--store", choices=("redis", "local"), default="redis", help="the store both share"
    )
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    ids = [f"bench-move-{i:012d}" for i in range(args.sessions)]
    with contextlib.ExitStack() as stack:
        if args.store == "local":
            url, state_dir = "local", stack.enter_context(tempfile.TemporaryDirectory())
        else:
            url, state_dir = args.redis or stack.enter_context(private_redis()), ""
        a, b = (
            stack.enter_context(
                grpc.insecure_channel(
                    stack.enter_context(replica(url, state_dir=state_dir)).address
                )
            )
            for _ in range(2)
        )
        stubs = [pb_grpc.PredictorStub(a), pb_grpc.PredictorStub(b)]
        created = [visit(stubs[0], session_id, rng) for session_id in ids]
        moves = [
            visit(stubs[(r + 1) % 2], session_id, rng)
            for r in range(2 * args.rounds)
            for session_id in ids
        ]
    p50c, p50, p90, p99 = (
        np.percentile(v, q) * 1e3 for v, q in ((created, 50), (moves, 50), (moves, 90), (moves, 99))
    )
    print(f"create Open p50 {p50c:.2f} ms ({len(created)} sessions)")
    print(
        f"moving Open p50 {p50:.2f} ms, p90 {p90:.2f} ms, p99 {p99:.2f} ms ({len(moves)} moves "
        "between 2 "
        f"processes, {args.store} store)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
