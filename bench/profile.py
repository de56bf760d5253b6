"""Where the server's CPU goes per message: py-spy on a loaded rnnstream server.

Starts ``rnnstream serve`` on the bench model, drives it with the load generator (in a
thread of this process) and samples the server with ``py-spy record --format raw`` (all
threads, native frames off, idle frames dropped). Prints the top functions by self time
and by inclusive time, and per thread. Needs ``py-spy`` (``pip install py-spy``; not a
project dependency) and ptrace permission (root, or ``kernel.yama.ptrace_scope=0``).

    python -m bench.profile --streams 1 --seconds 10
    python -m bench.profile --streams 16 --steps 256 --system rnnstream
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

from bench import models as bench_models
from bench.harness import processes, systems
from bench.harness.progress import say
from rnnstream import bench_report, loadgen


def summarize(collapsed: str, top: int) -> str:
    """Top frames by self and inclusive samples from py-spy's collapsed stacks."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        if frames and frames[0].startswith(("thread ", "process ")):
            threads[frames[0]] += count
            frames = [f for f in frames if not f.startswith(("thread ", "process "))]
        if not frames:
            continue
        own[_short(frames[-1])] += count
        for frame in dict.fromkeys(_short(f) for f in frames):
            inclusive[frame] += count
    if total == 0:
        return "no samples"
    lines = [f"{total} samples"]
    if threads:
        lines.append("\nby thread:")
        lines += [f"  {100 * n / total:5.1f}%  {t}" for t, n in threads.most_common(top)]
    lines.append("\nself time:")
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    lines.append("\ninclusive time:")
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in inclusive.most_common(top)]
    return "\n".join(lines)


def _short(frame: str) -> str:
    """``func (path/to/file.py:123)`` -> ``func (file.py:123)``."""
    name, _, where = frame.partition(" (")
    return f"{name} ({Path(where.rstrip(')')).name})" if where else name


def main(argv: Sequence[str] | None = None) -> int:
    """Run the load, sample the server, print the summary."""
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    p.add_argument("--system", default="rnnstream", help="echo, rnnstream or diy")
    p.add_argument("--streams", type=int, default=16)
    p.add_argument("--steps", type=int, default=1, help="time steps per message")
    p.add_argument("--seconds", type=float, default=10.0, help="sampling time")
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--raw", type=Path, default=None, help="keep the collapsed stacks here")
    args = p.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        raise SystemExit("py-spy is not installed: pip install py-spy")
    models = bench_models.build()
    system = systems.available(models, "bench-gru")[args.system]
    with tempfile.TemporaryDirectory() as tmp, processes.running([system], Path(tmp)) as started:
        server = started[0]
        spec = loadgen.LoadSpec(
            target=server.address,
            streams=args.streams,
            steps_per_message=args.steps,
            duration_s=args.seconds + 4,
            warmup_s=1.0,
            server_pid=server.pid,
            label=args.system,
        )
        results: list[loadgen.LoadResult] = []
        load = threading.Thread(target=lambda: results.append(loadgen.run(spec)), daemon=True)
        load.start()
        raw = args.raw or Path(tmp) / "stacks.txt"
        say(f"sampling {args.system} (pid {server.pid}) for {args.seconds:g}s")
        subprocess.run(
            [
                spy,
                "record",
                "--pid",
                str(server.pid),
                "--duration",
                str(int(args.seconds)),
                "--rate",
                str(args.rate),
                "--format",
                "raw",
                "--threads",
                "--output",
                str(raw),
                "--nonblocking",
            ],
            check=True,
            capture_output=True,
            timeout=args.seconds + 60,
        )
        load.join(args.seconds + spec.timeout_s)
        text = raw.read_text()
    if results:
        print(bench_report.format_table(results))
    print(summarize(text, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
