"""The lone-step path: CPU per small Steps message through ``SessionManager.steps``, in process.

No gRPC, no protobuf: sessions of the bench model (``bench.models``, GRU H=64) step on an
asyncio loop, each session's task sending one message of ``k`` time steps per loop
iteration, as a stream does when its next message arrives. At 1 session every message is
alone in its iteration (the engine runs it at once); at 16 sessions the messages of one
iteration share batches. Prints the event-loop thread's CPU time per message (best of
``--repeats`` rounds: the machine is shared and noise only ever adds), for each k and
session count.

It imports ``rnnstream`` from wherever Python finds it, so the same script measures any
checkout; the model is built once, next to this script, and shared by them:

    python bench/lone_step.py
    PYTHONPATH=/tmp/perf-before python bench/lone_step.py --repeats 7
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

import rnnstream
from bench import models as bench_models
from rnnstream.server.repository import ModelRepository
from rnnstream.server.sessions import Session, SessionManager
from rnnstream.server.settings import Settings

MODELS = Path(__file__).resolve().parent / ".cache" / "models"


def _new_session(sessions: SessionManager, model: str) -> Session:
    """A new session; also on older checkouts, whose SessionManager had a synchronous open."""
    create = getattr(sessions, "create", None)
    if create is not None:
        return create(model, "", None, False)
    return sessions.open(model, "", "", None, False)  # type: ignore[return-value]


async def _drive(sessions: SessionManager, count: int, k: int, messages: int) -> int:
    """Step ``count`` sessions ``messages`` times each; returns the loop thread's CPU ns."""
    model = bench_models.DEFAULT
    opened = [_new_session(sessions, model.name) for _ in range(count)]
    x = np.random.default_rng(0).standard_normal((k, model.n_features)).astype(np.float32)

    async def stream(session_index: int) -> None:
        session = opened[session_index]
        for i in range(messages):
            await asyncio.sleep(0)  # the next message arrives in a later loop iteration
            await sessions.steps(session, i * k, x)

    began = time.thread_time_ns()
    await asyncio.gather(*(stream(i) for i in range(count)))
    spent = time.thread_time_ns() - began
    for session in opened:
        await sessions.end(session, reset=True)
    return spent


def measure(sessions: SessionManager, count: int, k: int, messages: int, repeats: int) -> float:
    """Best per-message CPU time in us over ``repeats`` rounds (after one warm-up round)."""
    best = float("inf")
    gc.collect()
    gc.disable()
    try:
        for round_index in range(repeats + 1):
            spent = asyncio.run(_drive(sessions, count, k, messages))
            if round_index:  # the first round warms up onnxruntime and the caches
                best = min(best, spent / 1e3 / (count * messages))
    finally:
        gc.enable()
    return best


def main(argv: Sequence[str] | None = None) -> int:
    """``python bench/lone_step.py``: print us/message for each k and session count."""
    p = argparse.ArgumentParser(prog="python bench/lone_step.py", description=__doc__)
    p.add_argument("--steps", default="1,8", help="time steps per message (k)")
    p.add_argument("--sessions", default="1,16", help="concurrent sessions")
    p.add_argument("--messages", type=int, default=2000, help="messages per round, in all")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds; the best is shown")
    args = p.parse_args(argv)
    steps = [int(s) for s in args.steps.split(",") if s.strip()]
    counts = [int(s) for s in args.sessions.split(",") if s.strip()]
    if not steps or not counts or min(steps + counts) < 1 or args.messages < 1:
        p.error("--steps, --sessions and --messages take positive numbers")
    bench_models.build(MODELS)
    settings = Settings.from_env(
        {},
        models=MODELS,
        state_dir="",
        device="cpu",
        max_sessions=max(counts),
        max_streams=max(counts),
    )
    repository = ModelRepository.load(settings)
    print(f"rnnstream from {Path(rnnstream.__file__).resolve().parent.parent}")
    header = f"{'sessions':>8}  {'k':>3}  {'us/message':>10}"
    print(f"{header}  (event-loop thread CPU, best of {args.repeats})")
    try:
        sessions = SessionManager(repository, settings)
        for count in counts:
            for k in steps:
                messages = max(1, args.messages // count)
                us = measure(sessions, count, k, messages, args.repeats)
                print(f"{count:>8}  {k:>3}  {us:>10.1f}")
    finally:
        repository.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
