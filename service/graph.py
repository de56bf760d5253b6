"""The step graph in onnxruntime: load it, pick the provider, check it against its manifest.

``StepGraph.run(x [B, F], state [B, S]) -> (y [B, O], state_out [B, S])`` is one time step
for a batch of independent sessions. The provider is CUDA when it really loads (checked
with ``get_providers()`` after the session is created, since onnxruntime falls back to CPU
silently) and CPU otherwise.

On CUDA, TF32 is off (the export's 1e-5 parity holds on the GPU too) and a step graph runs
every batch through CUDA graphs, one per batch-size bucket (``graph_buckets``). With
``device="auto"`` a CUDA graph keeps a CPU session beside it and sends each call where its
batch size is cheaper, by costs measured when it is created (``device_routing``).
"""

from __future__ import annotations

import functools
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from rnnstream.manifest import INPUT_STATE, INPUT_X, OUTPUT_STATE, OUTPUT_Y, Manifest
from rnnstream.server import cuda_libs
from rnnstream.server.device_routing import (
    CHUNK_SIZES,
    CHUNK_STEPS,
    CPU_SIDE,
    STEP_SIZES,
    DeviceRouter,
    measure,
)
from rnnstream.server.graph_buckets import BucketedRunner

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
FLOAT = "tensor(float)"

ProviderSpec = str | tuple[str, dict[str, str]]


class GraphMismatch(ValueError):
    """The ONNX graph does not match its manifest; the message lists every difference."""


@dataclass(frozen=True)
class _Port:
    """One expected graph input or output: its name, rank and the static width of its last dim."""

    name: str
    width: int
    rank: int = 2


def choose_providers(device: str) -> list[str]:
    """Providers to ask onnxruntime for, given ``device`` (auto, cuda or cpu)."""
    if device == "cpu":
        return [CPU]
    if device == "cuda" or CUDA in ort.get_available_providers():
        return [CUDA, CPU]
    return [CPU]


def cuda_provider_options(cuda_graphs: bool) -> dict[str, str]:
    """The CUDA provider's options: TF32 off, and CUDA graphs when asked for.

    TF32 (on by default) rounds matmul inputs to 10 mantissa bits: a GRU stepped 300
    times drifts 6e-3 from CPU with it and 1.5e-5 without, at no measurable cost.
    """
    options = {"use_tf32": "0"}
    if cuda_graphs:
        options["enable_cuda_graph"] = "1"
    return options


def provider_specs(providers: list[str], cuda_graphs: bool) -> list[ProviderSpec]:
    """``providers`` as onnxruntime takes them, with the CUDA provider's options."""
    return [(p, cuda_provider_options(cuda_graphs)) if p == CUDA else p for p in providers]


@functools.cache
def _load_cuda_libraries() -> None:
    """Once per process, before the first CUDA session: preload the pip CUDA libraries."""
    problem = cuda_libs.preload_cuda_libraries(ort)
    if problem:
        log.warning("CUDA libraries: %s", problem)


@functools.cache
def _log_cuda_device() -> None:
    """Once per process, at the first CUDA session: the provider, the GPU and the versions."""
    log.info("provider %s on %s", CUDA, cuda_libs.query_cuda_device(ort).describe())


def _cuda_did_not_load(manifest: Manifest, device: str) -> None:
    """Raise for ``--device cuda``, warn for ``auto``: why CUDA did not load and how to fix it."""
    why = cuda_libs.explain_cuda_failure(ort)
    if device == "cuda":
        raise RuntimeError(
            f"{manifest.name}/{manifest.version}: --device cuda was asked for, but the CUDA "
            f"execution provider did not load: {why}. Use --device auto to fall back to CPU"
        )
    key = f"{manifest.name}/{manifest.version}"
    log.warning("%s: CUDA did not load, serving on CPU: %s", key, why)


class StepGraph:
    """An onnxruntime session over one model's step graph (or, ``chunked``, its sequence graph).

    The step graph runs one step for B sessions: ``x [B, F], state [B, S] -> y [B, O],
    state_out [B, S]``. The sequence graph runs T steps at once: ``x [B, T, F], state [B, S]
    -> y [B, T, O], state_out [B, S]``.

    ``cuda_graphs``: a step graph on CUDA captures a CUDA graph per batch-size bucket.
    ``bucketed``: run every step batch through the bucket buffers (default: on CUDA only;
    True on CPU runs the same padded path there).

    Example::

        graph = StepGraph(Path("models/seattle-temp/1/model.onnx"), manifest)
        y, state = graph.run(np.zeros((1, 1), np.float32), np.zeros((1, 32), np.float32))
    """

    def __init__(
        self,
        path: Path,
        manifest: Manifest,
        device: str = "auto",
        intra_op_threads: int = 1,
        chunked: bool = False,
        cuda_graphs: bool = True,
        bucketed: bool | None = None,
    ) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        requested = choose_providers(device)
        if requested[0] == CUDA:
            _load_cuda_libraries()
            if CUDA not in ort.get_available_providers():  # the CPU package: nothing to try
                _cuda_did_not_load(manifest, device)
                requested = [CPU]
        graphs = cuda_graphs and not chunked  # a chunk's T varies: no fixed shapes to capture
        self.session = ort.InferenceSession(
            str(path), options, providers=provider_specs(requested, graphs)
        )
        self.provider = self.session.get_providers()[0]
        if requested[0] == CUDA and self.provider != CUDA:
            _cuda_did_not_load(manifest, device)
        elif self.provider == CUDA:
            _log_cuda_device()
        self.path = path
        self.chunked = chunked
        self.n_features = manifest.n_features
        self.n_outputs = manifest.n_outputs
        self.state_size = manifest.state_size
        self._outputs = [OUTPUT_Y, OUTPUT_STATE]
        self._run_options = ort.RunOptions()  # one for all runs: a default per call costs
        on_cuda = self.provider == CUDA
        if bucketed is None:
            bucketed = on_cuda and not chunked
        if on_cuda and graphs and not bucketed:
            # A CUDA graph replays the addresses it captured: only bound buffers may feed it.
            raise ValueError("CUDA graphs run only through the bucketed buffers")
        self._buckets: BucketedRunner | None = None
        if bucketed and not chunked:
            self._buckets = BucketedRunner(
                self.session,
                self.n_features,
                self.n_outputs,
                self.state_size,
                "cuda" if on_cuda else "cpu",
                graph_ids=on_cuda and graphs,
            )
        # A one-session step (the common lone message) runs through preallocated buffers
        # bound once per thread, which skips onnxruntime's per-call wrapping of inputs and
        # allocation of outputs (~25 us of ~150 us in the message path). Only on CPU:
        # there the buffers are the tensors' memory.
        self._bind_single = not chunked and self.provider == CPU and self._buckets is None
        self._local = threading.local()
        self._cpu: StepGraph | None = None
        self.router: DeviceRouter | None = None
        if device == "auto" and on_cuda:
            cpu = StepGraph(path, manifest, "cpu", intra_op_threads, chunked)
            self.route_with(cpu, self.measure_router(cpu))
            log.info(
                "%s/%s %s graph: %s by measured cost per call",
                manifest.name,
                manifest.version,
                "sequence" if chunked else "step",
                self.router.describe() if self.router else "",
            )

    def measure_router(self, cpu: StepGraph) -> DeviceRouter:
        """Time this graph and ``cpu`` (the same graph on CPU) at a few batch sizes."""
        sizes, steps = (CHUNK_SIZES, CHUNK_STEPS) if self.chunked else (STEP_SIZES, 0)
        widths = (self.n_features, self.state_size)
        return DeviceRouter(
            measure(cpu.run, sizes, *widths, steps), measure(self._run_here, sizes, *widths, steps)
        )

    def route_with(self, cpu: StepGraph, router: DeviceRouter) -> None:
        """From now on run each call on ``cpu`` when ``router`` says CPU is cheaper for it."""
        self._cpu = cpu
        self.router = router

    def run(self, x: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """X [B, F] (or [B, T, F]), state [B, S] -> y [B, O] (or [B, T, O]), state_out [B, S]."""
        if self._bind_single and x.shape[0] == 1 and x.ndim == state.ndim == 2:
            return self._run_single(x, state)  # (a CPU graph: it has no router)
        if self._cpu is not None and self.router and self.router.side(len(x)) == CPU_SIDE:
            return self._cpu.run(x, state)
        return self._run_here(x, state)

    def _run_here(self, x: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run on this graph's own session: through the bucket buffers, or plainly."""
        if self._buckets is not None and x.ndim == 2:
            return self._buckets.run(x, state)
        y, state_out = self.session.run(
            self._outputs, {INPUT_X: x, INPUT_STATE: state}, self._run_options
        )
        return y, state_out

    def _run_single(self, x: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One session's step through this thread's bound buffers; returns copies."""
        bound: _SingleBinding | None = getattr(self._local, "single", None)
        if bound is None:
            bound = self._local.single = _SingleBinding(self)
        if (x.shape, x.dtype, state.shape, state.dtype) != bound.accepts:
            # What onnxruntime would refuse must not be cast or broadcast into the buffers.
            y, state_out = self.session.run(
                self._outputs, {INPUT_X: x, INPUT_STATE: state}, self._run_options
            )
            return y, state_out
        bound.x[...] = x
        bound.state[...] = state
        self.session.run_with_iobinding(bound.binding)
        return bound.y.copy(), bound.state_out.copy()


class _SingleBinding:
    """Buffers for a batch of one, bound to the graph's inputs and outputs once."""

    def __init__(self, graph: StepGraph) -> None:
        self.x = np.zeros((1, graph.n_features), dtype=np.float32)
        self.state = np.zeros((1, graph.state_size), dtype=np.float32)
        self.y = np.zeros((1, graph.n_outputs), dtype=np.float32)
        self.state_out = np.zeros((1, graph.state_size), dtype=np.float32)
        self.accepts = (self.x.shape, self.x.dtype, self.state.shape, self.state.dtype)
        self.binding = graph.session.io_binding()
        for name, array, bind in (
            (INPUT_X, self.x, self.binding.bind_input),
            (INPUT_STATE, self.state, self.binding.bind_input),
            (OUTPUT_Y, self.y, self.binding.bind_output),
            (OUTPUT_STATE, self.state_out, self.binding.bind_output),
        ):
            bind(name, "cpu", 0, np.float32, list(array.shape), array.ctypes.data)
        # Last, so that it is released after the binding: onnxruntime's IOBinding keeps a raw
        # pointer to its session and no reference, and garbage collection frees objects in
        # no particular order; a binding that outlived its session could touch freed memory.
        self.session = graph.session


def check_graph(
    graph: StepGraph, manifest: Manifest, expected_sha256: str, actual_sha256: str
) -> None:
    """Raise GraphMismatch naming every way the graph differs from its manifest."""
    problems: list[str] = []
    name = graph.path.name
    if expected_sha256 and actual_sha256 != expected_sha256:
        problems.append(
            f"{name} has sha256 {actual_sha256[:12]}..., the manifest records "
            f"{expected_sha256[:12]}... (the file changed after export)"
        )
    rank = 3 if graph.chunked else 2
    session = graph.session
    problems += _check_ports(
        "input",
        session.get_inputs(),
        [_Port(INPUT_X, manifest.n_features, rank), _Port(INPUT_STATE, manifest.state_size)],
    )
    problems += _check_ports(
        "output",
        session.get_outputs(),
        [_Port(OUTPUT_Y, manifest.n_outputs, rank), _Port(OUTPUT_STATE, manifest.state_size)],
    )
    if not problems:
        problems += _check_smoke_run(graph, manifest)
    if problems:
        raise GraphMismatch(
            f"model {manifest.name}/{manifest.version} refused, {graph.path} does not match "
            "its manifest: " + "; ".join(problems)
        )


def _check_ports(kind: str, actual: list[ort.NodeArg], expected: list[_Port]) -> list[str]:
    """Differences between a graph's inputs (or outputs) and the contract's."""
    problems: list[str] = []
    by_name = {a.name: a for a in actual}
    want = {p.name for p in expected}
    extra = sorted(set(by_name) - want)
    if extra:
        problems.append(f"unexpected {kind}s {extra} (the contract has {sorted(want)})")
    for port in expected:
        arg = by_name.get(port.name)
        if arg is None:
            problems.append(f"no {kind} named {port.name!r} (found {sorted(by_name)})")
            continue
        if arg.type != FLOAT:
            problems.append(f"{kind} {port.name} is {arg.type}, expected float32")
        shape = list(arg.shape)
        if len(shape) != port.rank:
            layout = "[B, N]" if port.rank == 2 else "[B, T, N]"
            problems.append(f"{kind} {port.name} has rank {len(shape)} {shape}, expected {layout}")
            continue
        dynamic = ["batch size", "time length"][: port.rank - 1]
        for axis, label in enumerate(dynamic):
            if isinstance(shape[axis], int) and shape[axis] > 0:
                problems.append(
                    f"{kind} {port.name} has a fixed {label} {shape[axis]}; it must be dynamic"
                )
        if isinstance(shape[-1], int) and shape[-1] != port.width:
            problems.append(
                f"{kind} {port.name} has width {shape[-1]}, the manifest says {port.width}"
            )
    return problems


def _check_smoke_run(graph: StepGraph, manifest: Manifest) -> list[str]:
    """Run a batch of 2 zero steps (3 for a sequence graph); check shapes and finiteness."""
    lead = (2, 3) if graph.chunked else (2,)
    x = np.zeros((*lead, manifest.n_features), dtype=np.float32)
    state = np.zeros((2, manifest.state_size), dtype=np.float32)
    try:
        y, state_out = graph.run(x, state)
    except Exception as exc:  # onnxruntime raises several unrelated types
        return [f"a batch of zero steps fails: {exc}"]
    problems = []
    if y.shape != (*lead, manifest.n_outputs):
        problems.append(
            f"y has shape {list(y.shape)} for x {list(x.shape)}, expected "
            f"{[*lead, manifest.n_outputs]}"
        )
    if state_out.shape != (2, manifest.state_size):
        problems.append(
            f"state_out has shape {list(state_out.shape)} for B=2, "
            f"expected [2, {manifest.state_size}]"
        )
    if not problems and not (np.isfinite(y).all() and np.isfinite(state_out).all()):
        problems.append("a zero step gives non-finite outputs")
    return problems
