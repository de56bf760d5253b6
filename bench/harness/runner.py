"""Running the plan against the started systems, restarting a system that crashes."""

from __future__ import annotations

import collections
import time
from pathlib import Path

from bench.harness import clients
from bench.harness.plan import Settings, plan, split
from bench.harness.processes import Running, start, tail
from bench.harness.progress import say
from bench.harness.results import failed
from rnnstream import bench_report, loadgen

MAX_RESTARTS = 2


def measure(
    item: Running, streams: int, steps: int, duration_s: float, settings: Settings, model: str
) -> loadgen.LoadResult:
    """One load-generator run against a started system.

    In this process when the run has one client; else split over client processes
    (:mod:`bench.harness.clients`), one per :class:`~bench.harness.plan.ClientShare`.
    """
    shares = split(streams, settings.clients, settings.channels)
    spec = loadgen.LoadSpec(
        target=item.address,
        streams=streams,
        steps_per_message=steps,
        duration_s=duration_s,
        warmup_s=settings.warmup_s,
        model=model,
        channels=shares[0].channels,
        server_pid=item.pid,
        timeout_s=settings.timeout_s,
        label=item.system.name,
    )
    try:
        if len(shares) > 1:
            return clients.run(spec, shares, item.system.protocol)
        return loadgen.run(spec, item.system.protocol())
    except Exception as exc:  # a system that fails one run still lets the others finish
        say(f"{item.system.name}: run failed: {type(exc).__name__}: {exc}")
        return failed(spec, f"{type(exc).__name__}: {exc}")


def run_all(
    settings: Settings, started: list[Running], model: str, logs: Path
) -> list[loadgen.LoadResult]:
    """Run the plan, printing one line per run; a system that crashes is restarted (twice)."""
    runs = plan(settings, [item.system for item in started])
    per_run = settings.warmup_s + settings.duration_s
    say(f"{len(runs)} runs, about {len(runs) * (per_run + 0.5) / 60:.1f} minutes")
    results = []
    crashes: collections.Counter[str] = collections.Counter()
    for i, (index, streams, steps, duration) in enumerate(runs, 1):
        item = started[index]
        if item.process.poll() is not None:
            continue  # crashed too often: given up on
        result = measure(item, streams, steps, duration, settings, model)
        results.append(result)
        if result.errors:
            time.sleep(1.0)  # a launcher (serve.py) notices its server's death within 0.2 s
        if settings.out is not None:  # what ran so far survives a crash of the harness
            bench_report.write_json(settings.out, results, {"partial": True})
        if item.process.poll() is not None:
            name = item.system.name
            crashes[name] += 1
            kept = item.log.with_name(f"{name}.crash-{crashes[name]}.log")
            item.log.rename(kept)
            note = (
                f"{name} exited (code {item.process.returncode}) during the run at {streams} "
                f"streams, k={steps} (log: {kept})"
            )
            say(note + "\n" + tail(kept, 8))
            if crashes[name] <= MAX_RESTARTS:
                started[index] = start(item.system, logs)
                note += "; restarted"
            else:
                note += "; its later runs were skipped"
            settings.notes.append(note)
        cpu = result.server_cpu_us_per_msg
        say(
            f"{i}/{len(runs)} {item.system.name:<11} streams={streams:<4} k={steps:<4} "
            f"{result.msg_per_s:>9,.0f} msg/s {result.timesteps_per_s:>11,.0f} steps/s "
            f"p50 {result.latency_us['p50']:>9,.0f} us"
            + (f"  srv {cpu:,.0f} us/msg" if cpu is not None else "")
            + (f"  ERRORS {result.errors}: {result.error_messages[0]}" if result.errors else "")
        )
    return results
