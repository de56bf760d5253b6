"""Memory per idle session: RSS at 10k, 100k and 1M sessions that have each taken a step.

Each size runs in a fresh subprocess (so sizes do not share allocator state). The child
loads the model repository with ``max_sessions`` = the size and ``state_dir=''``, measures
VmRSS, opens every session through ``SessionManager.open`` (no network), runs one step for
each through ``SessionManager.steps`` (the same path a Steps message takes, so the per-
session replay cache and last output exist, and the engine batches the steps), leaves them
idle (no stream attached), collects garbage and measures VmRSS again.

    python -m bench.memory                       # 10k, 100k, 1M on the bench GRU (H=64)
    python -m bench.memory --sizes 10000 --json out.json

Bytes per session = (RSS after - RSS before opening) / sessions; that includes the state
row (``4 * state_size`` bytes: 256 B at H=64), the ``Session`` object, its id, the
session dict and expiry heap entries, and the cached outputs.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# The memory target: 1M idle sessions in at most 1 GiB of RSS, so that one server process can
# hold a million idle sessions at once.
TARGET_BYTES_AT_1M = 1 << 30
CONCURRENCY = 4096  # steps in flight at once while stepping every session


def rss_bytes() -> int:
    """Resident set size (VmRSS) of the calling process."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


async def _measure(models: Path, model: str, count: int, max_batch: int) -> dict[str, Any]:
    import numpy as np

    from rnnstream.server.repository import ModelRepository
    from rnnstream.server.sessions import SessionManager
    from rnnstream.server.settings import Settings

    settings = Settings.from_env(
        {},
        models=models,
        default_model=model,
        max_sessions=count,
        max_streams=max(count, 1),
        state_dir="",
        max_batch=max_batch,
    )
    repository = ModelRepository.load(settings)
    try:
        manager = SessionManager(repository, settings)
        loaded = repository.get(model)
        n_features = loaded.manifest.n_features
        x = np.zeros((1, n_features), dtype=np.float32)  # [1, F]
        gc.collect()
        before = rss_bytes()
        began = time.perf_counter()
        sessions = [manager.create(model, "", True, False) for _ in range(count)]
        opened_at = time.perf_counter()
        gc.collect()
        after_open = rss_bytes()
        for lo in range(0, count, CONCURRENCY):
            await asyncio.gather(*(manager.steps(s, 0, x) for s in sessions[lo : lo + CONCURRENCY]))
        stepped_at = time.perf_counter()
        del sessions  # the manager holds them, as a server does for idle sessions
        gc.collect()
        after_step = rss_bytes()
        assert len(manager) == count
        return {
            "sessions": count,
            "model": loaded.key,
            "state_size": loaded.manifest.state_size,
            "rss_before": before,
            "rss_after_open": after_open,
            "rss_after_step": after_step,
            "bytes_per_session_opened": (after_open - before) / count,
            "bytes_per_session": (after_step - before) / count,
            "state_row_bytes": 4 * loaded.manifest.state_size,
            "open_s": opened_at - began,
            "step_s": stepped_at - opened_at,
            "engine_batches": loaded.engine.batches,
        }
    finally:
        repository.close()


def child(args: argparse.Namespace) -> int:
    """Measure one size and print one JSON line."""
    result = asyncio.run(_measure(args.models, args.model, args.child, args.max_batch))
    print(json.dumps(result), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Measure every size in its own process and print a table."""
    p = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__)
    p.add_argument("--sizes", default="10000,100000,1000000", help="session counts")
    p.add_argument("--models", type=Path, default=None, help="model repository (default: bench)")
    p.add_argument("--model", default="bench-gru", help="model (default bench-gru)")
    p.add_argument("--max-batch", type=int, default=512, help="engine max batch (default 512)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per size")
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.models is None:
        from bench import models as bench_models

        args.models = bench_models.build()
    if args.child is not None:
        return child(args)

    rows = []
    for size in [int(s) for s in args.sizes.split(",") if s.strip()]:
        print(f"[memory] {size:,} sessions ...", file=sys.stderr, flush=True)
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.memory",
                "--child",
                str(size),
                "--models",
                str(args.models),
                "--model",
                args.model,
                "--max-batch",
                str(args.max_batch),
            ],
            capture_output=True,
            text=True,
            timeout=args.timeout,
            check=False,
        )
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
            return 1
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))

    header = f"{'sessions':>10}  {'B/session':>10}  {'B/session (opened only)':>24}  "
    header += f"{'RSS total':>10}  {'open s':>7}  {'step s':>7}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['sessions']:>10,}  {r['bytes_per_session']:>10,.0f}  "
            f"{r['bytes_per_session_opened']:>24,.0f}  "
            f"{r['rss_after_step'] / 2**20:>8,.0f}MB  {r['open_s']:>7.1f}  {r['step_s']:>7.1f}"
        )
    big = [r for r in rows if r["sessions"] == 1_000_000]
    if big:
        total = big[0]["rss_after_step"]
        sessions_only = big[0]["bytes_per_session"] * 1_000_000
        verdict = "met" if total <= TARGET_BYTES_AT_1M else "NOT met"
        print(
            f"1M idle sessions: RSS {total / 2**30:.2f} GiB in all "
            f"({sessions_only / 2**30:.2f} GiB for the sessions); target <= 1 GiB: {verdict}"
        )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"results": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
