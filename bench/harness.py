"""The benchmark harness: every system on the same machine, the same load, interleaved.

Starts each system as its own process on 127.0.0.1 and a free port:

- ``echo``: ``bench.echo_server``, the transport floor (gRPC + protobuf + asyncio, no model);
- ``rnnstream``: ``python -m rnnstream.cli serve`` over the bench model;
- ``diy``: ``bench.diy_server``, onnxruntime ``run()`` per step inside the handler;
- ``triton`` / ``torchserve``: when their peer environments exist (``bench/peers/*/setup.sh``);
- any ``--extra NAME=COMMAND`` (e.g. another build of rnnstream to compare against);

then runs the load generator (:mod:`rnnstream.loadgen`, in this process) against each,
interleaved (A B C A B C ...) over ``--reps`` repetitions so that drift in the machine's
load hits every system alike: lock-step, one time step per message, at each stream count;
then chunked runs (``--chunk-streams`` streams, ``--chunk-steps`` steps per message). It
prints a table of medians with ratios against the echo floor and the baselines measured in
the same run, checks the targets of issue 4, writes JSON to ``bench/results/`` and a plot to
``docs/img/bench_throughput.png``.

    python -m bench.harness --quick             # < 1 minute
    python -m bench.harness                     # the full run of docs/benchmarks.md
    python -m bench.harness --systems echo,rnnstream --streams 1,16 --reps 5
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from rnnstream import bench_report, loadgen

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PLOT = ROOT / "docs" / "img" / "bench_throughput.png"
PEERS = ROOT / "bench" / ".peers"
READY = re.compile(
    r"serving .* on (?P<host>[\w.\-\[\]:]+?):(?P<port>\d+)(?: \(pid (?P<pid>\d+)\))?"
)
BASELINES = ("echo", "diy", "triton", "torchserve")
MAX_RESTARTS = 2

# Targets of issue 4: rnnstream / other >= ratio at these stream counts (lock-step, k=1).
RATIO_TARGETS: tuple[tuple[str, float, tuple[int, ...]], ...] = (
    ("echo", 0.85, (1, 16, 128)),
    ("triton", 2.5, (1, 64)),
    ("torchserve", 10.0, (1, 64)),
)
CHUNK_TARGET_STEPS_PER_S = 500_000


@dataclass
class System:
    """A server to benchmark: how to start it and which protocol it speaks."""

    name: str
    command: list[str]
    protocol: Callable[[], loadgen.StreamProtocol] = loadgen.RnnstreamProtocol
    env: dict[str, str] | None = None
    chunks: bool = True  # accepts k > 1 steps per message
    startup_timeout_s: float = 120.0


@dataclass
class Running:
    """A started system: its process, address and the pid whose CPU is measured."""

    system: System
    process: subprocess.Popen[bytes]
    address: str
    pid: int
    log: Path


@dataclass
class Settings:
    """The harness's run plan (from the command line)."""

    systems: list[str]
    streams: list[int]
    duration_s: float
    warmup_s: float
    reps: int
    chunk_steps: int
    chunk_streams: list[int]
    chunk_duration_s: float
    models: Path | None
    model: str
    server_args: list[str]
    extra: dict[str, str]
    out: Path | None
    plot: Path | None
    logs: Path | None
    timeout_s: float
    quick: bool
    label: str = ""
    notes: list[str] = field(default_factory=list)


def say(message: str) -> None:
    """Progress, on stderr."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- starting and stopping systems -------------------------------------------------------------


def _peer(name: str) -> Path:
    return PEERS / name


def available_systems(models: Path, model: str, settings: Settings) -> dict[str, System]:
    """Every system this machine can run, by name (peers only when set up)."""
    python = sys.executable
    manifest = _manifest(models, model)
    systems = {
        "echo": System(
            "echo",
            [
                python,
                "-m",
                "bench.echo_server",
                "--model",
                model,
                "--features",
                str(manifest["n_features"]),
                "--outputs",
                str(manifest["n_outputs"]),
                "--state-size",
                str(manifest["state_size"]),
            ],
        ),
        "rnnstream": System(
            "rnnstream",
            [
                python,
                "-m",
                "rnnstream.cli",
                "serve",
                "--models",
                str(models),
                "--default-model",
                model,
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--state-dir",
                "",
                *settings.server_args,
            ],
        ),
        "diy": System(
            "diy",
            [python, "-m", "bench.diy_server", "--models", str(models), "--model", model],
        ),
    }
    triton_python = _peer("triton") / "venv" / "bin" / "python"
    if triton_python.exists():
        systems["triton"] = System(
            "triton",
            [python, "-m", "bench.peers.triton.serve", "--models", str(models), "--model", model],
            protocol=_peer_protocol("bench.peers.triton.client", "TritonProtocol"),
            startup_timeout_s=240.0,
        )
    torchserve_python = _peer("torchserve") / "venv" / "bin" / "python"
    if torchserve_python.exists():
        systems["torchserve"] = System(
            "torchserve",
            [
                python,
                "-m",
                "bench.peers.torchserve.serve",
                "--models",
                str(models),
                "--model",
                model,
            ],
            protocol=_peer_protocol("bench.peers.torchserve.client", "TorchServeProtocol"),
            startup_timeout_s=240.0,
        )
    for name, command in settings.extra.items():
        words = [
            w.replace("{models}", str(models)).replace("{model}", model)
            for w in shlex.split(command)
        ]
        systems[name] = System(name, words)
    return systems


def _peer_protocol(module: str, name: str) -> Callable[[], loadgen.StreamProtocol]:
    def make() -> loadgen.StreamProtocol:
        import importlib

        factory: Callable[[], loadgen.StreamProtocol] = getattr(
            importlib.import_module(module), name
        )
        return factory()

    return make


def _manifest(models: Path, model: str) -> dict[str, Any]:
    found = sorted(models.glob(f"{model}/*/manifest.json"))
    if not found:
        raise SystemExit(f"bench: no {model}/<version>/manifest.json under {models}")
    data: dict[str, Any] = json.loads(found[-1].read_text())
    return data


def start(system: System, logs: Path) -> Running:
    """Start a system and wait for its ``serving ... on HOST:PORT`` line (bounded)."""
    log = logs / f"{system.name}.log"
    env = dict(os.environ)
    env.update(system.env or {})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    with log.open("wb") as sink:
        process = subprocess.Popen(
            system.command,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() ends its children too
        )
    deadline = time.monotonic() + system.startup_timeout_s
    try:
        while time.monotonic() < deadline:
            match = READY.search(log.read_text(errors="replace"))
            if match:
                pid = int(match["pid"]) if match["pid"] else process.pid
                address = f"127.0.0.1:{match['port']}"
                return Running(system, process, address, pid, log)
            if process.poll() is not None:
                raise RuntimeError(
                    f"{system.name} exited with {process.returncode} before serving:\n" + _tail(log)
                )
            time.sleep(0.1)
        raise RuntimeError(
            f"{system.name} did not report serving within {system.startup_timeout_s:g}s:\n"
            + _tail(log)
        )
    except BaseException:
        _terminate(process)
        raise


def _tail(log: Path, lines: int = 20) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def _terminate(process: subprocess.Popen[bytes], grace_s: float = 15.0) -> None:
    """SIGTERM the process group, then SIGKILL it if it lingers."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)


@contextlib.contextmanager
def running(systems: Sequence[System], logs: Path) -> Iterator[list[Running]]:
    """Start every system (in order), yield them, stop them all whatever happens."""
    started: list[Running] = []
    try:
        for system in systems:
            say(f"starting {system.name}: {shlex.join(system.command)}")
            began = time.monotonic()
            started.append(start(system, logs))
            say(
                f"{system.name} serving on {started[-1].address} "
                f"(pid {started[-1].pid}, {time.monotonic() - began:.1f}s)"
            )
        yield started
    finally:
        for item in started:
            _terminate(item.process)


# --- the run -----------------------------------------------------------------------------------


def measure(
    item: Running, streams: int, steps: int, duration_s: float, settings: Settings, model: str
) -> loadgen.LoadResult:
    """One load-generator run against a started system."""
    spec = loadgen.LoadSpec(
        target=item.address,
        streams=streams,
        steps_per_message=steps,
        duration_s=duration_s,
        warmup_s=settings.warmup_s,
        model=model,
        server_pid=item.pid,
        timeout_s=settings.timeout_s,
        label=item.system.name,
    )
    try:
        return loadgen.run(spec, item.system.protocol())
    except Exception as exc:  # a system that fails one run still lets the others finish
        say(f"{item.system.name}: run failed: {type(exc).__name__}: {exc}")
        return _failed(spec, f"{type(exc).__name__}: {exc}")


def _failed(spec: loadgen.LoadSpec, message: str) -> loadgen.LoadResult:
    nan = float("nan")
    return loadgen.LoadResult(
        label=spec.label,
        target=spec.target,
        streams=spec.streams,
        window=spec.window,
        steps_per_message=spec.steps_per_message,
        channels=spec.n_channels,
        elapsed_s=0.0,
        messages=0,
        timesteps=0,
        errors=spec.streams,
        error_messages=[message],
        msg_per_s=0.0,
        timesteps_per_s=0.0,
        latency_us={"p50": nan, "p90": nan, "p99": nan, "mean": nan, "max": nan},
        server_cpu_us_per_msg=None,
        client_cpu_us_per_msg=None,
        n_features=0,
        n_outputs=0,
    )


def plan(settings: Settings, systems: Sequence[System]) -> list[tuple[int, int, int, float]]:
    """Every run in order as (system index, streams, k, seconds).

    Per repetition, per stream count, every system; the order rotates by one each
    repetition (A B C, then B C A, ...), so no system always runs right after another.
    """
    runs: list[tuple[int, int, int, float]] = []
    n = len(systems)
    for rep in range(settings.reps):
        order = [(rep + j) % n for j in range(n)]
        for streams in settings.streams:
            runs.extend((i, streams, 1, settings.duration_s) for i in order)
        if settings.chunk_steps > 1:
            for streams in settings.chunk_streams:
                runs.extend(
                    (i, streams, settings.chunk_steps, settings.chunk_duration_s)
                    for i in order
                    if systems[i].chunks
                )
    return runs


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
            say(note + "\n" + _tail(kept, 8))
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


# --- summary -----------------------------------------------------------------------------------


@dataclass
class Cell:
    """The median of the repetitions of one (system, streams, k)."""

    system: str
    streams: int
    steps: int
    reps: int
    msg_per_s: float
    msg_per_s_min: float
    msg_per_s_max: float
    timesteps_per_s: float
    p50_us: float
    p99_us: float
    server_cpu_us_per_msg: float | None
    client_cpu_us_per_msg: float | None
    errors: int


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None and v == v]
    return statistics.median(present) if present else None


def summarize(results: Sequence[loadgen.LoadResult]) -> list[Cell]:
    """Medians per (system, streams, k), in first-seen order."""
    groups: dict[tuple[str, int, int], list[loadgen.LoadResult]] = {}
    for r in results:
        groups.setdefault((r.label, r.streams, r.steps_per_message), []).append(r)
    cells = []
    for (system, streams, steps), every in groups.items():
        # A repetition that failed (a crash) does not count towards the medians if others ran.
        rs = [r for r in every if r.errors == 0] or every
        rates = [r.msg_per_s for r in rs]
        cells.append(
            Cell(
                system=system,
                streams=streams,
                steps=steps,
                reps=len(rs),
                msg_per_s=statistics.median(rates),
                msg_per_s_min=min(rates),
                msg_per_s_max=max(rates),
                timesteps_per_s=statistics.median([r.timesteps_per_s for r in rs]),
                p50_us=_median([r.latency_us["p50"] for r in rs]) or float("nan"),
                p99_us=_median([r.latency_us["p99"] for r in rs]) or float("nan"),
                server_cpu_us_per_msg=_median([r.server_cpu_us_per_msg for r in rs]),
                client_cpu_us_per_msg=_median([r.client_cpu_us_per_msg for r in rs]),
                errors=sum(r.errors for r in every),
            )
        )
    return cells


def _n(value: float | None, digits: int = 0) -> str:
    if value is None or value != value:
        return "-"
    return f"{value:,.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows)
    return "\n".join(lines)


def report(cells: Sequence[Cell], subject: str = "rnnstream") -> tuple[str, list[dict[str, Any]]]:
    """The tables (markdown-friendly text) and the target checks."""
    by = {(c.system, c.streams, c.steps): c for c in cells}
    systems = list(dict.fromkeys(c.system for c in cells))
    lock = sorted({c.streams for c in cells if c.steps == 1})
    out = []

    out.append("Per run (medians over repetitions; lock-step unless k > 1):")
    rows = []
    for c in cells:
        rows.append(
            [
                c.system,
                str(c.streams),
                str(c.steps),
                str(c.reps),
                _n(c.msg_per_s),
                f"{_n(c.msg_per_s_min)}-{_n(c.msg_per_s_max)}",
                _n(c.timesteps_per_s),
                _n(c.p50_us),
                _n(c.p99_us),
                _n(c.server_cpu_us_per_msg),
                _n(c.client_cpu_us_per_msg),
                str(c.errors),
            ]
        )
    out.append(
        _table(
            [
                "system",
                "streams",
                "k",
                "reps",
                "msg/s",
                "range",
                "steps/s",
                "p50 us",
                "p99 us",
                "srv cpu us/msg",
                "cli cpu us/msg",
                "errors",
            ],
            rows,
        )
    )

    others = [s for s in systems if s != subject]
    if subject in systems and others:
        out.append("")
        out.append(f"msg/s, lock-step k=1, and {subject} / other (same run):")
        header = ["streams", *systems, *[f"/{o}" for o in others]]
        rows = []
        for streams in lock:
            mine = by.get((subject, streams, 1))
            row = [str(streams)]
            row += [
                _n(by[(s, streams, 1)].msg_per_s) if (s, streams, 1) in by else "-" for s in systems
            ]
            for o in others:
                theirs = by.get((o, streams, 1))
                ratio = (
                    mine.msg_per_s / theirs.msg_per_s
                    if mine and theirs and theirs.msg_per_s > 0
                    else None
                )
                row.append(_n(ratio, 2) + ("x" if ratio is not None else ""))
            rows.append(row)
        out.append(_table(header, rows))

    checks: list[dict[str, Any]] = []
    for other, target, at in RATIO_TARGETS:
        for streams in at:
            mine = by.get((subject, streams, 1))
            theirs = by.get((other, streams, 1))
            if mine is None or theirs is None or theirs.msg_per_s <= 0:
                continue
            ratio = mine.msg_per_s / theirs.msg_per_s
            checks.append(
                {
                    "target": f"{subject} >= {target:g}x {other} at {streams} streams",
                    "value": round(ratio, 3),
                    "met": ratio >= target,
                }
            )
    for c in cells:
        if c.system == subject and c.steps > 1:
            per_core = 1e6 * c.steps / c.server_cpu_us_per_msg if c.server_cpu_us_per_msg else None
            checks.append(
                {
                    "target": f"{subject} >= {CHUNK_TARGET_STEPS_PER_S:,} steps/s, "
                    f"{c.streams} stream{'s' if c.streams != 1 else ''}, k={c.steps}",
                    "value": round(c.timesteps_per_s),
                    "per_server_cpu_second": None if per_core is None else round(per_core),
                    "met": c.timesteps_per_s >= CHUNK_TARGET_STEPS_PER_S,
                }
            )
    if checks:
        out.append("")
        out.append("Targets (issue 4):")
        for check in checks:
            extra = (
                f" ({check['per_server_cpu_second']:,} per server CPU-second)"
                if check.get("per_server_cpu_second")
                else ""
            )
            mark = "met" if check["met"] else "NOT met"
            out.append(f"  {mark:<7}  {check['target']}: {check['value']:,}{extra}")
    return "\n".join(out), checks


def plot(cells: Sequence[Cell], path: Path, title: str) -> None:
    """Throughput and p50 latency vs streams, one line per system (lock-step, k=1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for system in dict.fromkeys(c.system for c in cells):
        # A run that produced nothing (the system crashed) is a gap, not a zero.
        series = sorted(
            (c for c in cells if c.system == system and c.steps == 1 and c.msg_per_s > 0),
            key=lambda c: c.streams,
        )
        if not series:
            continue
        xs = [c.streams for c in series]
        ax1.plot(xs, [c.msg_per_s for c in series], marker="o", label=system)
        ax1.fill_between(
            xs, [c.msg_per_s_min for c in series], [c.msg_per_s_max for c in series], alpha=0.15
        )
        ax2.plot(xs, [c.p50_us / 1000 for c in series], marker="o", label=system)
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent streams (lock-step, 1 step per message)")
        ax.grid(True, which="both", alpha=0.3)
    ax1.set_ylabel("messages per second (median; band: min-max)")
    ax1.set_ylim(bottom=0)
    ax2.set_ylabel("p50 latency per message (ms)")
    ax2.set_yscale("log")
    ax1.legend()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_at_start": os.getloadavg(),
    }


# --- command line ------------------------------------------------------------------------------


def parse(argv: Sequence[str] | None) -> Settings:
    """The command line."""
    p = argparse.ArgumentParser(
        prog="python -m bench.harness",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
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
    systems = [s for s in args.systems.split(",") if s.strip()]
    systems += [name for name in extra if name not in systems]
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Settings(
        systems=systems,
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
    )


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


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
    available = available_systems(models, settings.model, settings)
    chosen = []
    for name in settings.systems:
        if name in available:
            chosen.append(available[name])
        elif name in ("triton", "torchserve"):
            note = f"{name}: skipped, not set up (bash bench/peers/{name}/setup.sh)"
            settings.notes.append(note)
            say(note)
        else:
            raise SystemExit(f"bench: unknown system {name!r}; known: {', '.join(available)}")
    if not chosen:
        raise SystemExit("bench: no system to run")
    meta = {
        "when": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
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
        "argv": list(sys.argv[1:] if argv is None else argv),
        "label": settings.label,
        "notes": settings.notes,
    }
    logs = settings.logs or Path(tempfile.mkdtemp(prefix="rnnstream-bench-logs-"))
    logs.mkdir(parents=True, exist_ok=True)
    say(f"server logs in {logs}")
    with running(chosen, logs) as started:
        results = run_all(settings, started, settings.model, logs)
    cells = summarize(results)
    text, checks = report(cells)
    print(text, file=stdout)
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
        plot(cells, settings.plot, title)
        say(f"wrote {settings.plot}")
    return 1 if any(r.errors for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
