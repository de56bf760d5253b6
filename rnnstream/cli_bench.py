"""``rnnstream bench``: drive load at a running server and print what it sustains.

Registered by ``rnnstream.cli`` through :func:`add_parser`. The load generator
(:mod:`rnnstream.loadgen`) and its reporting (:mod:`rnnstream.bench_report`) are imported
only when the command runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

ADDRESS_ENV = "RNNSTREAM_ADDRESS"
FALLBACK_ADDRESS = "localhost:50051"

EPILOG = """examples:
  # 16 sessions in lock-step for 10 s against a local server
  rnnstream bench --address 127.0.0.1:50051 --streams 16 --duration 10

  # a sweep over stream counts, with the server's CPU per message, saved as JSON
  rnnstream bench --streams 1,16,64,128 --server-pid $(pgrep -f 'rnnstream serve') --json out.json

  # 256 time steps per message, 4 messages in flight per stream
  rnnstream bench --steps 256 --window 4

Latency is per message, from send to reply. Messages carry random inputs; every session
runs many-to-many (return_sequences) and is closed at the end.
"""


def _positive_ints(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of integers"
        ) from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: give one or more integers >= 1")
    return values


def add_parser(subparsers: Any) -> None:
    """Register ``bench``."""
    parser = subparsers.add_parser(
        "bench",
        help="load-test a server: msg/s, steps/s, latency percentiles",
        description=(
            "Open N concurrent sessions against a server and stream Steps messages, "
            "lock-step (send, await the reply) or pipelined (a window of messages in flight "
            "per stream). Prints msg/s, time steps/s, p50/p90/p99 latency and errors."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--address",
        default=None,
        help=f"server HOST:PORT (default: ${ADDRESS_ENV}, else {FALLBACK_ADDRESS})",
    )
    parser.add_argument("--model", default="", help="model name (default: the server's default)")
    parser.add_argument(
        "--streams",
        type=_positive_ints,
        default=[1],
        help="concurrent sessions, or a comma-separated sweep such as 1,16,64 (default 1)",
    )
    parser.add_argument(
        "--window",
        type=int,
        default=1,
        help="messages in flight per stream: 1 is lock-step (default), more is pipelined",
    )
    parser.add_argument(
        "--steps", type=int, default=1, help="time steps per Steps message, k (default 1)"
    )
    parser.add_argument(
        "--duration", type=float, default=5.0, help="seconds measured per run (default 5)"
    )
    parser.add_argument(
        "--messages",
        type=int,
        default=None,
        help="measure exactly this many messages per stream instead of --duration",
    )
    parser.add_argument(
        "--warmup", type=float, default=1.0, help="unmeasured seconds first (default 1)"
    )
    parser.add_argument(
        "--channels",
        type=int,
        default=0,
        help="gRPC channels (connections) to spread streams over (default: 1 per 32, max 4)",
    )
    parser.add_argument(
        "--server-pid",
        type=int,
        default=None,
        help="also report the server's CPU microseconds per message (reads /proc/PID/stat)",
    )
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds allowed to connect and open"
    )
    parser.add_argument("--label", default="", help="name of the system in the table")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the load (a sweep when several stream counts are given) and report."""
    from rnnstream import bench_report, loadgen

    address = args.address or os.environ.get(ADDRESS_ENV) or FALLBACK_ADDRESS
    results = []
    try:
        for streams in args.streams:
            spec = loadgen.LoadSpec(
                target=address,
                streams=streams,
                window=args.window,
                steps_per_message=args.steps,
                duration_s=args.duration,
                messages=args.messages,
                warmup_s=args.warmup,
                model=args.model,
                channels=args.channels,
                server_pid=args.server_pid,
                timeout_s=args.timeout,
                label=args.label,
            )
            print(
                f"bench: {streams} stream(s), {spec.mode}, k={args.steps} against {address} ...",
                file=sys.stderr,
                flush=True,
            )
            results.append(loadgen.run(spec))
    except ValueError as exc:
        print(f"rnnstream bench: {exc}", file=sys.stderr)
        return 2
    except (loadgen.LoadError, OSError) as exc:
        print(f"rnnstream bench: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # grpc.RpcError from ListModels: the server is not there
        if type(exc).__module__.startswith("grpc"):
            print(f"rnnstream bench: cannot reach {address}: {exc}", file=sys.stderr)
            return 1
        raise
    print(bench_report.format_table(results))
    for result in results:
        for message in result.error_messages:
            print(f"error ({result.streams} streams): {message}", file=sys.stderr)
    if args.json is not None:
        bench_report.write_json(args.json, results, {"address": address})
        print(f"wrote {args.json}", file=sys.stderr)
    return 1 if any(r.errors for r in results) else 0


def main(argv: list[str] | None = None) -> int:
    """``python -m rnnstream.cli_bench ARGS``: the same as ``rnnstream bench ARGS``."""
    parser = argparse.ArgumentParser(prog="rnnstream")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
