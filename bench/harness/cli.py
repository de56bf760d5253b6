"""The command line of ``python -m bench.harness``: parse the flags, run, print and write."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import signal
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import bench.harness
from bench.harness import aggregate, machine, plot, processes, report, runner, systems, targets
from bench.harness.paths import PLOT, RESULTS, ROOT
from bench.harness.plan import Settings
from bench.harness.progress import say
from rnnstream import bench_report


def parse(argv: Sequence[str] | None) -> Settings:
    """The command line."""
    doc = bench.harness.__doc__
    p = argparse.ArgumentParser(
        prog="python -m bench.harness",
        description=doc.split("\n\n")[0] if doc else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="a < 1 minute run: 1,16 streams, 1 rep")
    p.add_argument(
        "--systems",
        default="echo,rnnstream,diy,triton,torchserve",
        help="comma-separated; peers without a set-up environment are skipped",
    )
    p.add_argument("--streams", default="1,16,64,128", help="stream counts (lock-step, k=1)")
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds per run")
    p.add_argument("--reps", type=int, default=3, help="repetitions (interleaved)")
    p.add_argument("--chunk-steps", type=int, default=256, help="k of the chunked runs (0: none)")
    p.add_argument(
        "--chunk-streams",
        default="1,16",
        help="stream counts of the chunked runs (1: latency-bound; 16: sessions share batches)",
    )
    p.add_argument("--chunk-duration", type=float, default=None, help="(default: --duration)")
    p.add_argument(
        "--models", type=Path, default=None, help="model repository (default: build bench-gru)"
    )
    p.add_argument("--model", default="bench-gru", help="model to serve (default bench-gru)")
    p.add_argument(
        "--server-args",
        default="",
        help="extra flags for `rnnstream serve`, e.g. '--max-batch 256'",
    )
    p.add_argument(
        "--extra",
        action="append",
        default=[],
        metavar="NAME=COMMAND",
        help="another rnnstream-protocol server to include; COMMAND must print "
        "'serving ... on HOST:PORT' to stderr; {models} and {model} are substituted",
    )
    p.add_argument(
        "--workers",
        default="1",
        help="rnnstream's --workers, comma-separated: each count is its own system, "
        "rnnstream for 1, rnnstream-wN for N (e.g. 1,2)",
    )
    p.add_argument(
        "--clients",
        type=int,
        default=1,
        help="load-generator processes per run, the streams split evenly over them and "
        "measured over the same window (default 1: in this process)",
    )
    p.add_argument(
        "--channels",
        type=int,
        default=0,
        help="channels (connections) per client process (default 0: one per 32 streams, "
        "at most 4, with one client; up to 4 per client with several)",
    )
    p.add_argument("--out", type=Path, default=None, help="JSON file (default bench/results/...)")
    p.add_argument("--no-json", action="store_true", help="write no JSON")
    p.add_argument(
        "--plot", type=Path, default=None, help=f"PNG (default {PLOT.relative_to(ROOT)})"
    )
    p.add_argument("--no-plot", action="store_true", help="draw no plot")
    p.add_argument(
        "--logs", type=Path, default=None, help="folder for server logs (default: a temp folder)"
    )
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to connect/open per run")
    p.add_argument("--label", default="", help="a note stored with the results")
    args = p.parse_args(argv)

    streams = [int(s) for s in args.streams.split(",") if s.strip()]
    duration, warmup, reps = args.duration, args.warmup, args.reps
    chunk_streams = [int(s) for s in args.chunk_streams.split(",") if s.strip()]
    if any(n < 1 for n in [*streams, *chunk_streams]):
        p.error("--streams and --chunk-streams take stream counts of 1 or more")
    if args.quick:
        streams = [1, 16] if args.streams == p.get_default("streams") else streams
        if args.chunk_streams == p.get_default("chunk_streams"):
            chunk_streams = [1]
        duration = min(duration, 1.5)
        warmup = min(warmup, 0.3)
        reps = 1 if args.reps == p.get_default("reps") else reps
    extra = {}
    for item in args.extra:
        name, sep, command = item.partition("=")
        if not sep or not name or not command:
            p.error(f"--extra {item!r}: use NAME=COMMAND")
        extra[name] = command
    try:
        workers = [int(w) for w in args.workers.split(",") if w.strip()]
    except ValueError:
        workers = []
    if not workers or any(w < 1 for w in workers):
        p.error("--workers takes worker counts of 1 or more, e.g. 1,2")
    if "--workers" in args.server_args:
        p.error("give rnnstream's worker counts with --workers, not in --server-args")
    if args.clients < 1:
        p.error("--clients takes 1 or more")
    if args.channels < 0:
        p.error("--channels takes 0 (automatic) or more")
    names = [s for s in args.systems.split(",") if s.strip()]
    if args.workers != p.get_default("workers") and "rnnstream" not in names:
        p.error("--workers applies to rnnstream, which --systems leaves out")
    names = [
        expanded
        for name in names
        for expanded in (
            [systems.rnnstream_name(w) for w in dict.fromkeys(workers)]
            if name == "rnnstream"
            else [name]
        )
    ]
    names += [name for name in extra if name not in names]
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Settings(
        systems=names,
        streams=streams,
        duration_s=duration,
        warmup_s=warmup,
        reps=max(1, reps),
        chunk_steps=args.chunk_steps,
        chunk_streams=chunk_streams,
        chunk_duration_s=args.chunk_duration or duration,
        models=args.models,
        model=args.model,
        server_args=shlex.split(args.server_args),
        extra=extra,
        out=None if args.no_json else (args.out or RESULTS / f"bench-{stamp}.json"),
        logs=args.logs,
        plot=None if args.no_plot else (args.plot or PLOT),
        timeout_s=args.timeout,
        quick=args.quick,
        label=args.label,
        workers=workers,
        clients=args.clients,
        channels=args.channels,
    )


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _choose(settings: Settings, models: Path) -> list[systems.System]:
    """The systems asked for, in order; peers not set up are skipped with a note."""
    available = systems.available(
        models, settings.model, settings.server_args, settings.extra, settings.workers
    )
    chosen = []
    for name in settings.systems:
        if name in available:
            chosen.append(available[name])
        elif name in systems.PEER_ADAPTERS:
            note = f"{name}: skipped, not set up (bash bench/peers/{name}/setup.sh)"
            settings.notes.append(note)
            say(note)
        else:
            raise SystemExit(f"bench: unknown system {name!r}; known: {', '.join(available)}")
    if not chosen:
        raise SystemExit("bench: no system to run")
    return chosen


def main(argv: Sequence[str] | None = None, stdout: IO[str] | None = None) -> int:
    """Run the benchmark; 0 when every run finished without errors."""
    settings = parse(argv)
    stdout = stdout or sys.stdout
    if threading.current_thread() is threading.main_thread():
        # SIGTERM unwinds like Ctrl-C, so every started server is stopped on the way out.
        signal.signal(signal.SIGTERM, _raise_interrupt)
    if settings.models is None:
        from bench import models as bench_models

        say("building the bench model (cached after the first time)")
        models = bench_models.build()
    else:
        models = settings.models
    chosen = _choose(settings, models)
    meta = {
        "when": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": machine.describe(),
        "models": str(models),
        "model": settings.model,
        "systems": [s.name for s in chosen],
        "commands": {s.name: shlex.join(s.command) for s in chosen},
        "streams": settings.streams,
        "duration_s": settings.duration_s,
        "warmup_s": settings.warmup_s,
        "reps": settings.reps,
        "chunk_steps": settings.chunk_steps,
        "chunk_streams": settings.chunk_streams,
        "clients": settings.clients,
        "channels": settings.channels,
        "argv": list(sys.argv[1:] if argv is None else argv),
        "label": settings.label,
        "notes": settings.notes,
    }
    logs = settings.logs or Path(tempfile.mkdtemp(prefix="rnnstream-bench-logs-"))
    logs.mkdir(parents=True, exist_ok=True)
    say(f"server logs in {logs}")
    with processes.running(chosen, logs) as started:
        results = runner.run_all(settings, started, settings.model, logs)
    cells = aggregate.summarize(results)
    checks = targets.check(cells)
    print(report.render(cells, checks), file=stdout)
    for note in settings.notes:
        print(f"note: {note}", file=stdout)
    if settings.out is not None:
        meta["summary"] = [c.__dict__ for c in cells]
        meta["checks"] = checks
        bench_report.write_json(settings.out, results, meta)
        say(f"wrote {settings.out}")
    if settings.plot is not None:
        title = (
            f"{settings.model}, lock-step, k=1, {os.cpu_count()} cores shared by client and servers"
        )
        plot.throughput(cells, settings.plot, title)
        say(f"wrote {settings.plot}")
    return 1 if any(r.errors for r in results) else 0
