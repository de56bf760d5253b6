"""One run's load from several load-generator processes that measure the same window.

One Python load generator is bound by its own core long before a server of several worker
processes is, so the harness can split a run's streams over client processes
(``--clients``). Each is a fresh process (``spawn``: no gRPC state inherited across a
fork) running :func:`rnnstream.loadgen.run` on its share, with its own channels, hence
its own connections. Every client opens and warms up its streams, then waits at a shared
barrier, so all of them start their measured phase together and measure equally long;
their results are then combined (:func:`bench.harness.results.combine`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import multiprocessing
import multiprocessing.queues
import multiprocessing.synchronize
import queue
import time
from collections.abc import Callable, Sequence

from bench.harness.plan import ClientShare
from bench.harness.results import combine, failed
from rnnstream import loadgen

# Bound on starting a client process (imports) before it opens its streams.
START_S = 60.0
# Beyond a run's own bounds: a client that has not reported by then is given up on.
REPORT_MARGIN_S = 30.0
POLL_S = 0.5
EXIT_S = 5.0


def run(
    spec: loadgen.LoadSpec,
    shares: Sequence[ClientShare],
    protocol: Callable[[], loadgen.StreamProtocol],
) -> loadgen.LoadResult:
    """Run ``spec`` with its streams split over one process per share, then combine.

    ``protocol`` must pickle (a class or a module-level function): each process builds
    its own. The calling program's main module must be safe to import (``spawn`` imports
    it in each client), as ``python -m bench.harness`` and pytest are. A client that fails
    counts its streams as errors, and the others stop waiting for it.
    """
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(len(shares))
    reports: multiprocessing.queues.Queue[tuple[int, loadgen.LoadResult]] = context.Queue()
    specs = [
        dataclasses.replace(spec, streams=share.streams, channels=share.channels)
        for share in shares
    ]
    processes = [
        context.Process(
            target=_client,
            args=(i, part, protocol, barrier, reports),
            name=f"bench-client-{i}",
            daemon=True,
        )
        for i, part in enumerate(specs)
    ]
    results: dict[int, loadgen.LoadResult] = {}
    try:
        for process in processes:
            process.start()
        deadline = time.monotonic() + START_S + 2 * spec.timeout_s + spec.warmup_s
        deadline += _measured_s(spec) + REPORT_MARGIN_S
        while len(results) < len(processes) and time.monotonic() < deadline:
            try:
                index, result = reports.get(timeout=POLL_S)
            except queue.Empty:
                if not any(p.is_alive() for i, p in enumerate(processes) if i not in results):
                    results.update(_drain(reports))  # what they sent before they exited
                    break
                continue
            results[index] = result
    finally:
        # Clients that all reported are exiting; otherwise (a timeout, Ctrl-C) stop them now.
        grace_s = EXIT_S if len(results) == len(processes) else 0.0
        for process in processes:
            if process.pid is None:
                continue  # never started
            process.join(timeout=grace_s)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5.0)
        reports.close()
    return combine(
        [
            results.get(
                i, failed(part, f"client {i} did not report (it exited or ran out of time)")
            )
            for i, part in enumerate(specs)
        ]
    )


def _drain(
    reports: multiprocessing.queues.Queue[tuple[int, loadgen.LoadResult]],
) -> dict[int, loadgen.LoadResult]:
    """Whatever is left in the queue."""
    left = {}
    with contextlib.suppress(queue.Empty):
        while True:
            index, result = reports.get(timeout=POLL_S)
            left[index] = result
    return left


def _measured_s(spec: loadgen.LoadSpec) -> float:
    return spec.duration_s if spec.messages is None else spec.timeout_s


def _client(
    index: int,
    spec: loadgen.LoadSpec,
    protocol: Callable[[], loadgen.StreamProtocol],
    barrier: multiprocessing.synchronize.Barrier,
    reports: multiprocessing.queues.Queue[tuple[int, loadgen.LoadResult]],
) -> None:
    """In a client process: run its share, measuring once every client is warmed up."""
    bound_s = START_S + spec.timeout_s + spec.warmup_s

    async def all_warmed() -> None:
        # A thread waits, so this client's event loop keeps its connections serviced.
        await asyncio.get_running_loop().run_in_executor(None, barrier.wait, bound_s)

    try:
        result = loadgen.run(spec, protocol(), before_measuring=all_warmed)
    except Exception as exc:  # reported as the run's errors, like a failed single run
        barrier.abort()  # the others stop waiting for this one
        result = failed(spec, f"client {index}: {type(exc).__name__}: {exc}")
    reports.put((index, result))
