"""Opening a session at capacity: the cost of evicting one idle session, vs. a free row.

A full model must evict its least recently used idle session before it can open another
(``SessionManager.open``). This measures, on the event loop's own code path (no network),
how long one such Open takes when many idle sessions of *another* model are older, against
an Open into a model with room, in the same process. The ratio stays near 1 when eviction
walks only the full model's sessions; it grows with the other model's sessions when it
walks everything.

    python -m bench.eviction                    # 10k, 100k, 200k sessions of each model
    python -m bench.eviction --sizes 1000 --opens 50
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Sequence

from rnnstream.server.end_reasons import EndReason
from rnnstream.server.repository import ModelRepository
from rnnstream.server.sessions import SessionManager
from rnnstream.server.settings import Settings, bundled_models_dir

FULL, OTHER = "seattle-temp", "msft-vol"  # the two bundled models


def measure(size: int, opens: int) -> tuple[float, float]:
    """(us per Open with a free row, us per Open that evicts) with ``size`` sessions each."""
    settings = Settings.from_env(
        {}, models=bundled_models_dir(), state_dir="", max_sessions=size + opens, max_streams=1
    )
    repository = ModelRepository.load(settings)
    try:
        sessions = SessionManager(repository, settings)
        for _ in range(size):
            sessions.create(OTHER, "", None, False)  # older, idle: ahead in any LRU order
        for _ in range(size):
            sessions.create(FULL, "", None, False)
        free = _time_opens(sessions, opens)  # the last rows of the table are still free
        evicting = _time_opens(sessions, opens)  # now full: each Open evicts one
        if sessions.ended_counts[EndReason.EVICTED] != opens:
            raise RuntimeError("the timed Opens did not each evict one session")
        return free * 1e6, evicting * 1e6
    finally:
        repository.close()


def _time_opens(sessions: SessionManager, opens: int) -> float:
    """Seconds per Open of the full model, with the cyclic GC out of the timed loop."""
    gc.collect()
    gc.disable()
    try:
        began = time.perf_counter()
        for _ in range(opens):
            sessions.create(FULL, "", None, False)
        return (time.perf_counter() - began) / opens
    finally:
        gc.enable()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.eviction``: print the table."""
    p = argparse.ArgumentParser(prog="python -m bench.eviction", description=__doc__)
    p.add_argument("--sizes", default="10000,100000,200000", help="sessions of each model")
    p.add_argument("--opens", type=int, default=200, help="Opens timed per case")
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if not sizes or min(sizes) < 1 or args.opens < 1:
        p.error("--sizes and --opens take positive numbers")
    print(f"{'sessions per model':>18}  {'Open, free row':>14}  {'Open, evicting':>14}  ratio")
    print("-" * 60)
    for size in sizes:
        free, evicting = measure(size, args.opens)
        print(f"{size:>18,}  {free:>11,.1f} us  {evicting:>11,.1f} us  {evicting / free:5.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
