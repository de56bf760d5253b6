"""The GPU device check: provider, parity, CUDA graphs, step costs, routing, the server on CUDA.

Run on a machine with an NVIDIA GPU and onnxruntime-gpu (``bench/gpu_check.sh`` sets up the
library paths first)::

    python -m bench.gpu_check --json gpu_check.json > gpu_check.md

It prints a markdown report and writes the same figures as JSON:

1. environment: onnxruntime, its providers, the CUDA it was built for, the GPU;
2. provider and placement: each bundled graph on CUDA, every node on CUDA (a session that
   may not fall back to CPU is created);
3. parity: ``sessions`` sessions stepped ``steps`` steps, CUDA (TF32 off, CUDA graphs) vs
   CPU, max |difference| of y and state (target <= 1e-5); TF32 on for comparison;
4. graph capture: per bucket, the first call (capture) and a steady call;
5. step calls: us per call and session-steps/s at each batch size for CPU, CUDA plain,
   CUDA bucketed without graphs and CUDA graphs (what the engine pays per batch);
6. chunks: a ``chunk_steps``-step chunk through the sequence graph, CPU vs CUDA;
7. routing: the crossover points ``--device auto`` measured;
8. the server end to end with ``--device cuda`` (a load run with no errors);
9. the server benchmark, ``--device`` cpu vs cuda vs auto, lock-step k=1, at each stream
   count, the streams split over ``--clients`` load-generator processes.

Without CUDA the CPU parts run and the report says, in one line, that CUDA is absent (so
the check itself is tested on CPU with tiny sizes: ``--quick``). Imports stay light: numpy
and onnxruntime, and grpcio only for the server parts.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from rnnstream.manifest import Manifest
from rnnstream.server import cuda_libs
from rnnstream.server.device_routing import median_call_us
from rnnstream.server.graph import CPU, CUDA, StepGraph, cuda_provider_options

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
MODEL = "seattle-temp"
PARITY_TARGET = 1e-5


@dataclass
class Sizes:
    """How much the check does: the full run, or ``--quick`` for a smoke test on CPU."""

    batches: list[int] = field(default_factory=lambda: [1, 256, 4096, 65536])
    buckets: list[int] = field(default_factory=lambda: [1, 2, 16, 64, 256, 1024, 4096])
    parity_steps: int = 300
    parity_sessions: int = 64
    chunk_steps: int = 256
    chunk_batches: list[int] = field(default_factory=lambda: [1, 4096])
    repeats: int = 20
    streams: list[int] = field(default_factory=lambda: [1, 64, 512, 4096])
    duration_s: float = 10.0
    warmup_s: float = 2.0
    clients: int = 4

    @classmethod
    def quick(cls) -> Sizes:
        """Tiny sizes: seconds on a CPU."""
        return cls([1, 8], [1, 4], 10, 4, 8, [1, 4], 3, [1], 0.5, 0.2, 1)


@dataclass
class Report:
    """The markdown lines and the JSON figures, filled section by section."""

    lines: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def section(self, title: str) -> None:
        """Start a section."""
        self.lines += ["", f"## {title}", ""]

    def say(self, line: str) -> None:
        """One line of text."""
        self.lines.append(line)

    def table(self, header: list[str], rows: list[list[object]]) -> None:
        """A markdown table."""
        self.lines.append("| " + " | ".join(header) + " |")
        self.lines.append("|" + "---|" * len(header))
        self.lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def cuda_present() -> bool:
    """Whether onnxruntime really creates a CUDA session here (not only lists the provider)."""
    if CUDA not in ort.get_available_providers():
        return False
    try:
        graph, _ = load_graph("cuda")
    except RuntimeError:
        return False
    return graph.provider == CUDA


def load_graph(device: str, chunked: bool = False, **options: Any) -> tuple[StepGraph, Manifest]:
    """The bundled model's step (or sequence) graph on ``device``."""
    directory = MODELS / MODEL / "1"
    manifest = Manifest.load(directory)
    name = manifest.sequence_onnx_file if chunked else manifest.onnx_file
    assert name, f"{MODEL} has no {'sequence' if chunked else 'step'} graph"
    return StepGraph(directory / name, manifest, device, chunked=chunked, **options), manifest


def inputs(rows: int, manifest: Manifest, steps: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random ``x`` and ``state`` for a batch of ``rows`` (``steps`` > 0: a chunk)."""
    rng = np.random.default_rng(rows)
    lead = (rows, steps) if steps else (rows,)
    x = rng.normal(size=(*lead, manifest.n_features)).astype(np.float32)
    return x, rng.normal(size=(rows, manifest.state_size)).astype(np.float32) * 0.1


def environment(report: Report, cuda: bool) -> None:
    """Versions, providers and the GPU."""
    report.section("Environment")
    smi = shutil.which("nvidia-smi")
    gpus = subprocess.run([smi, "-L"], capture_output=True, text=True).stdout.strip() if smi else ""
    env = {
        "onnxruntime": ort.__version__,
        "providers": ort.get_available_providers(),
        "built_for_cuda": cuda_libs.cuda_build_version(ort),
        "gpus": gpus or "none (no nvidia-smi)",
        "cuda": cuda,
        "cpu_count": os.cpu_count(),
    }
    if cuda:
        env["device"] = cuda_libs.query_cuda_device(ort).describe()
    report.data["environment"] = env
    for key, value in env.items():
        report.say(f"- {key}: {value}")
    if not cuda:
        report.say("")
        report.say(
            "**CUDA is absent here: only the CPU parts ran** ("
            + cuda_libs.explain_cuda_failure(ort)
            + ")"
        )


def placement(report: Report) -> None:
    """Each bundled graph on CUDA, and whether every node is placed there."""
    report.section("Provider and placement")
    rows, found = [], {}
    for model in sorted(p.name for p in MODELS.iterdir() if (p / "1").is_dir()):
        manifest = Manifest.load(MODELS / model / "1")
        for name in filter(None, (manifest.onnx_file, manifest.sequence_onnx_file)):
            options = ort.SessionOptions()
            # Session creation fails when any node would run on CPU.
            options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
            try:
                session = ort.InferenceSession(
                    str(MODELS / model / "1" / name),
                    options,
                    providers=[(CUDA, cuda_provider_options(False)), CPU],
                )
                provider, all_cuda = session.get_providers()[0], "yes"
            except Exception as exc:  # onnxruntime raises several types
                provider, all_cuda = "?", f"no: {exc}"[:200]
            rows.append([f"{model}/{name}", provider, all_cuda])
            found[f"{model}/{name}"] = {"provider": provider, "every_node_on_cuda": all_cuda}
    report.table(["graph", "provider", "every node on CUDA"], rows)
    report.data["placement"] = found


def parity(report: Report, sizes: Sizes) -> None:
    """CUDA (graphs, TF32 off) vs CPU over many steps; TF32 on for comparison."""
    report.section("Parity, CUDA vs CPU")
    cpu, manifest = load_graph("cpu")
    cuda, _ = load_graph("cuda")
    directory = MODELS / MODEL / "1"
    tf32 = ort.InferenceSession(
        str(directory / manifest.onnx_file), providers=[(CUDA, {"use_tf32": "1"}), CPU]
    )

    def run_tf32(x: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        y, state_out = tf32.run(None, {"x": x, "state": state})
        return y, state_out

    rng = np.random.default_rng(0)
    n, steps = sizes.parity_sessions, sizes.parity_steps
    xs = rng.normal(size=(steps, n, manifest.n_features)).astype(np.float32)
    worst = {}
    for label, run in (("tf32 off, cuda graphs", cuda.run), ("tf32 on, plain", run_tf32)):
        h_cpu = h_gpu = np.zeros((n, manifest.state_size), np.float32)
        diff_y = diff_state = 0.0
        for t in range(steps):
            y_cpu, h_cpu = cpu.run(xs[t], h_cpu)
            y_gpu, h_gpu = run(xs[t], h_gpu)
            diff_y = max(diff_y, float(np.abs(y_cpu - y_gpu).max()))
            diff_state = max(diff_state, float(np.abs(h_cpu - h_gpu).max()))
        worst[label] = {"y": diff_y, "state": diff_state}
    report.table(
        ["CUDA run", "max abs diff y", "max abs diff state"],
        [[k, f"{v['y']:.2e}", f"{v['state']:.2e}"] for k, v in worst.items()],
    )
    served = worst["tf32 off, cuda graphs"]
    ok = max(served.values()) <= PARITY_TARGET
    report.say("")
    report.say(
        f"{n} sessions x {steps} steps; target <= {PARITY_TARGET:g}: {'met' if ok else 'MISSED'}"
    )
    report.data["parity"] = {"sessions": n, "steps": steps, "max_abs_diff": worst, "met": ok}


def capture(report: Report, sizes: Sizes) -> None:
    """Per bucket: the first call (allocation and CUDA graph capture) and a steady one."""
    report.section("CUDA graph capture per bucket")
    graph, manifest = load_graph("cuda")
    rows, found = [], {}
    for bucket in sizes.buckets:
        x, state = inputs(bucket, manifest)
        start = time.perf_counter()
        graph.run(x, state)
        first = (time.perf_counter() - start) * 1e6
        steady = median_call_us(graph.run, x, state, sizes.repeats)
        rows.append([bucket, f"{first:,.0f}", f"{steady:,.1f}"])
        found[bucket] = {"first_us": first, "steady_us": steady}
    report.table(["bucket", "first call us (capture)", "steady us"], rows)
    report.data["capture"] = found


def step_costs(report: Report, sizes: Sizes, cuda: bool) -> None:
    """Us per step call and session-steps/s at each batch size, per way of running."""
    report.section("Step calls (what the engine pays per batch)")
    ways: dict[str, StepGraph] = {"CPU, 1 thread": load_graph("cpu")[0]}
    if cuda:
        ways["CUDA plain"] = load_graph("cuda", cuda_graphs=False, bucketed=False)[0]
        ways["CUDA bucketed, no graphs"] = load_graph("cuda", cuda_graphs=False, bucketed=True)[0]
        ways["CUDA graphs"] = load_graph("cuda")[0]
    manifest = Manifest.load(MODELS / MODEL / "1")
    found: dict[str, dict[int, float]] = {way: {} for way in ways}
    for batch in sizes.batches:
        x, state = inputs(batch, manifest)
        for way, graph in ways.items():
            found[way][batch] = median_call_us(graph.run, x, state, sizes.repeats)
    header = ["B sessions"] + [f"{way} us (M steps/s)" for way in ways]
    rows: list[list[object]] = []
    for batch in sizes.batches:
        cells = [f"{found[w][batch]:,.1f} ({batch / found[w][batch]:,.2f})" for w in ways]
        rows.append([batch, *cells])
    report.table(header, rows)
    report.data["step_us"] = found


def chunk_costs(report: Report, sizes: Sizes, cuda: bool) -> None:
    """A chunk of ``chunk_steps`` steps through the sequence graph, CPU vs CUDA."""
    report.section(f"Chunks of {sizes.chunk_steps} steps through the sequence graph")
    ways = {"CPU": load_graph("cpu", chunked=True)}
    if cuda:
        ways["CUDA"] = load_graph("cuda", chunked=True)
    found: dict[str, dict[int, float]] = {way: {} for way in ways}
    for batch in sizes.chunk_batches:
        for way, (graph, manifest) in ways.items():
            x, state = inputs(batch, manifest, sizes.chunk_steps)
            found[way][batch] = median_call_us(graph.run, x, state, max(3, sizes.repeats // 4))
    report.table(
        ["B sessions", *[f"{w} us" for w in ways]],
        [[b, *[f"{found[w][b]:,.0f}" for w in ways]] for b in sizes.chunk_batches],
    )
    report.data["chunk_us"] = found


def routing(report: Report) -> None:
    """The crossover points ``--device auto`` measures at start-up."""
    report.section("Routing with --device auto (measured at start-up)")
    found = {}
    for kind, chunked in (("step", False), ("sequence", True)):
        graph, _ = load_graph("auto", chunked=chunked)
        router = graph.router
        found[kind] = {
            "crossovers": router.describe() if router else "no router (no CUDA)",
            "cpu_us": dict(zip(router.cpu.sizes, router.cpu.micros, strict=True)) if router else {},
            "cuda_us": dict(zip(router.cuda.sizes, router.cuda.micros, strict=True))
            if router
            else {},
        }
        report.say(f"- {kind} graph: {found[kind]['crossovers']}")
    report.data["routing"] = found


@contextlib.contextmanager
def serving(device: str, logs: Path, workers: int = 1) -> Iterator[tuple[str, int]]:
    """``rnnstream serve --device DEVICE`` on 127.0.0.1 and a free port: (address, pid)."""
    from bench.harness.processes import start, terminate
    from bench.harness.systems import System

    command = [sys.executable, "-m", "rnnstream.cli", "serve", "--device", device]
    command += ["--host", "127.0.0.1", "--port", "0", "--state-dir", "", "--max-sessions", "8192"]
    if workers > 1:
        command += ["--workers", str(workers)]
    name = f"rnnstream-{device}" + (f"-w{workers}" if workers > 1 else "")
    system = System(name, command, startup_timeout_s=300.0, workers=workers)
    running = start(system, logs)
    try:
        yield running.address, running.pid
    finally:
        terminate(running.process)


def load(address: str, pid: int, streams: int, sizes: Sizes, clients: int) -> dict[str, Any]:
    """Lock-step k=1 load over ``clients`` processes; msg/s, latency, errors."""
    from bench.harness import clients as client_processes
    from bench.harness.plan import split
    from rnnstream import loadgen

    spec = loadgen.LoadSpec(
        target=address,
        streams=streams,
        duration_s=sizes.duration_s,
        warmup_s=sizes.warmup_s,
        server_pid=pid,
        timeout_s=300.0,
    )
    if clients > 1 and streams > 1:
        result = client_processes.run(spec, split(streams, clients), loadgen.RnnstreamProtocol)
    else:
        result = loadgen.run(spec)
    return {
        "streams": streams,
        "msg_per_s": result.msg_per_s,
        "p99_us": result.latency_us.get("p99"),
        "errors": result.errors,
    }


def server_end_to_end(report: Report, sizes: Sizes, device: str) -> None:
    """The server with ``--device DEVICE`` serves a load run with no errors; its log says how."""
    report.section(f"Server end to end, --device {device}")
    with tempfile.TemporaryDirectory() as logs, serving(device, Path(logs)) as (address, pid):
        outcome = load(address, pid, 1, sizes, 1)
        log = (Path(logs) / f"rnnstream-{device}.log").read_text(errors="replace")
    lines = [line for line in log.splitlines() if "provider" in line or "loaded" in line]
    report.say(f"- {outcome['msg_per_s']:,.0f} msg/s at 1 stream, {outcome['errors']} errors")
    report.lines += [f"- log: `{line.strip()[-160:]}`" for line in lines[:6]]
    report.data[f"server_{device}"] = {**outcome, "log": lines}


def server_benchmark(report: Report, sizes: Sizes, devices: list[str], workers: int) -> None:
    """``--device`` each of ``devices`` at each stream count; auto vs CPU ratios."""
    report.section(
        f"Server benchmark, {workers} worker(s), lock-step k=1, {sizes.clients} client processes"
    )
    found: dict[str, dict[int, dict[str, Any]]] = {}
    for device in devices:
        found[device] = {}
        with (
            tempfile.TemporaryDirectory() as logs,
            serving(device, Path(logs), workers) as (addr, pid),
        ):
            for streams in sizes.streams:
                found[device][streams] = load(addr, pid, streams, sizes, sizes.clients)
    rows: list[list[object]] = []
    for streams in sizes.streams:
        cells = [f"{found[d][streams]['msg_per_s']:,.0f}" for d in devices]
        ratio = ""
        if "auto" in found and "cpu" in found:
            auto, cpu = found["auto"][streams], found["cpu"][streams]
            ratio = f"{auto['msg_per_s'] / cpu['msg_per_s']:.2f}"
        rows.append([streams, *cells, ratio])
    report.table(["streams", *[f"{d} msg/s" for d in devices], "auto / cpu"], rows)
    key = "server_benchmark" if workers == 1 else f"server_benchmark_w{workers}"
    report.data[key] = found


def main(argv: list[str] | None = None) -> int:
    """Run every part this machine can; print markdown, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=Path("gpu_check.json"))
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    parser.add_argument("--no-server", action="store_true", help="skip the server parts")
    parser.add_argument("--duration", type=float, default=None, help="seconds per load run")
    parser.add_argument("--clients", type=int, default=None, help="load-generator processes")
    parser.add_argument(
        "--workers",
        default="1",
        help="server worker counts for the benchmark, comma-separated (default 1)",
    )
    parser.add_argument(
        "--streams", default=None, help="stream counts, comma-separated (default 1,64,512,4096)"
    )
    args = parser.parse_args(argv)
    sizes = Sizes.quick() if args.quick else Sizes()
    if args.duration is not None:
        sizes.duration_s = args.duration
    if args.clients is not None:
        sizes.clients = args.clients
    if args.streams:
        sizes.streams = [int(s) for s in args.streams.split(",")]
    cuda = cuda_present()
    report = Report()
    report.say("# rnnstream GPU device check")
    parts: list[tuple[str, Callable[[], None]]] = [
        ("environment", lambda: environment(report, cuda))
    ]
    if cuda:
        parts += [
            ("placement", lambda: placement(report)),
            ("parity", lambda: parity(report, sizes)),
            ("capture", lambda: capture(report, sizes)),
        ]
    parts += [
        ("step costs", lambda: step_costs(report, sizes, cuda)),
        ("chunk costs", lambda: chunk_costs(report, sizes, cuda)),
    ]
    if cuda:
        parts.append(("routing", lambda: routing(report)))
    if not args.no_server:
        devices = ["cpu", "cuda", "auto"] if cuda else ["cpu"]
        end_to_end = "cuda" if cuda else "cpu"
        parts += [
            ("server end to end", lambda: server_end_to_end(report, sizes, end_to_end)),
        ]
        for count in (int(w) for w in args.workers.split(",")):
            bench = functools.partial(server_benchmark, report, sizes, devices, count)
            parts.append((f"server benchmark, {count} worker(s)", bench))
    failed = []
    for name, part in parts:
        began = time.monotonic()
        try:
            part()
        except Exception as exc:  # one broken part must not hide the others' figures
            failed.append(name)
            report.say(f"**{name} failed**: {type(exc).__name__}: {exc}")
        print(f"gpu_check: {name} done in {time.monotonic() - began:.1f}s", file=sys.stderr)
    report.data["failed"] = failed
    print("\n".join(report.lines))
    args.json.write_text(json.dumps(report.data, indent=1, default=str))
    print(f"gpu_check: wrote {args.json}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
