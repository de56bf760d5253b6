"""Load generator for rnnstream servers (and, through adapters, for other systems).

``N`` concurrent streams (one session each) send ``Steps`` messages of ``k`` time steps
and wait for the ``Outputs``, either in lock-step (send, await the reply, send again) or
pipelined (a window of ``W`` messages in flight per stream). It measures messages per
second, time steps per second, per-message latency (send -> reply) percentiles, errors,
and, given the server's pid, the server's CPU time per message.

Everything runs on one event loop with ``grpc.aio``; streams are spread over a few
channels (one HTTP/2 connection each). Request messages are built once and only their
``start`` index changes, so the client spends as little CPU per message as it can: the
client shares the machine with the server in a local benchmark.

The wire protocol is pluggable (:class:`StreamProtocol`): :class:`RnnstreamProtocol`
speaks ``rnnstream.v1.Predictor/Stream``; the benchmark harness plugs in adapters for
other servers so every system is measured by the same loop.

Example::

    from rnnstream.loadgen import LoadSpec, run

    result = run(LoadSpec(target="127.0.0.1:50051", streams=16, duration_s=5))
    print(result.msg_per_s, result.latency_us["p99"])

:mod:`rnnstream.bench_report` prints results as a table and writes them as JSON.

Uses only grpcio, protobuf, numpy and the standard library (it ships with the SDK, so
``rnnstream bench`` works from a serving install).
"""

from __future__ import annotations

import abc
import asyncio
import collections
import contextlib
import dataclasses
import math
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from rnnstream.proc_cpu import tree_cpu_seconds
from rnnstream.v1 import rnnstream_pb2 as pb
from rnnstream.v1 import rnnstream_pb2_grpc as pb_grpc

# The end-of-stream marker of grpc.aio's read() (grpc-stubs does not declare it).
GRPC_EOF: object = grpc.aio.EOF  # type: ignore[attr-defined]

STREAMS_PER_CHANNEL = 32
MAX_CHANNELS = 4
MAX_ERRORS_KEPT = 10
# Latencies kept per stream at most: bounds the client's memory on very long runs.
MAX_SAMPLES_PER_STREAM = 2_000_000
_NO_LIMIT = sys.maxsize


class LoadError(RuntimeError):
    """A stream got an answer it did not expect (wrong kind, wrong size, early end)."""


@dataclass
class LoadSpec:
    """What to run: the target, the shape of the load, and how long.

    The measured phase runs ``duration_s`` seconds, or exactly ``messages`` messages per
    stream when ``messages`` is set (then ``timeout_s`` bounds it). ``warmup_s`` of
    unmeasured traffic comes first on every stream.
    """

    target: str
    streams: int = 1
    window: int = 1  # messages in flight per stream; 1 is lock-step
    steps_per_message: int = 1  # k time steps per Steps message
    duration_s: float = 5.0
    messages: int | None = None  # per stream; overrides duration_s
    warmup_s: float = 1.0
    model: str = ""  # empty: the server's default model
    channels: int = 0  # 0: one per STREAMS_PER_CHANNEL streams, at most MAX_CHANNELS
    server_pid: int | None = None  # its CPU (and its children's) is measured per message
    timeout_s: float = 120.0  # bound on connecting, opening and a count-limited phase
    label: str = ""  # what the system under test is called in tables

    def __post_init__(self) -> None:
        problems = []
        if self.streams < 1:
            problems.append("streams must be at least 1")
        if self.window < 1:
            problems.append("window must be at least 1 (1 is lock-step)")
        if self.steps_per_message < 1:
            problems.append("steps_per_message must be at least 1")
        if self.messages is None and not self.duration_s > 0:
            problems.append("duration_s must be positive (or set messages)")
        if self.messages is not None and self.messages < 1:
            problems.append("messages must be at least 1")
        if self.warmup_s < 0:
            problems.append("warmup_s must be 0 or more")
        if self.channels < 0:
            problems.append("channels must be 0 (automatic) or more")
        if not self.timeout_s > 0:
            problems.append("timeout_s must be positive")
        if problems:
            raise ValueError("invalid load: " + "; ".join(problems))

    @property
    def n_channels(self) -> int:
        """Channels actually used."""
        if self.channels:
            return min(self.channels, self.streams)
        return max(1, min(MAX_CHANNELS, math.ceil(self.streams / STREAMS_PER_CHANNEL)))

    @property
    def mode(self) -> str:
        """``lock-step`` or ``pipelined(W)``."""
        return "lock-step" if self.window == 1 else f"pipelined({self.window})"


@dataclass
class LoadResult:
    """What one run measured. Latencies in microseconds; CPU in microseconds per message."""

    label: str
    target: str
    streams: int
    window: int
    steps_per_message: int
    channels: int
    elapsed_s: float
    messages: int
    timesteps: int
    errors: int
    error_messages: list[str]
    msg_per_s: float
    timesteps_per_s: float
    latency_us: dict[str, float]
    server_cpu_us_per_msg: float | None
    client_cpu_us_per_msg: float | None
    n_features: int
    n_outputs: int
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return dataclasses.asdict(self)


# --- protocols --------------------------------------------------------------------------------


class StreamDriver(abc.ABC):
    """One bidi stream of the system under test: open it, make requests, check replies."""

    call: Any  # the grpc.aio stream-stream call: write(), read(), done_writing(), cancel()

    @abc.abstractmethod
    async def open(self) -> None:
        """Start the call and do whatever handshake the protocol needs (Open -> Opened)."""

    @abc.abstractmethod
    def request(self) -> object:
        """The next request message; advances the stream's step counter."""

    @abc.abstractmethod
    def check(self, response: object) -> None:
        """Raise LoadError unless ``response`` is the reply a request expects."""

    @abc.abstractmethod
    async def close(self) -> None:
        """End the session politely and finish the call (bounded by the caller)."""


class StreamProtocol(abc.ABC):
    """A wire protocol the load generator can drive."""

    name: str = "protocol"
    n_features: int = 0
    n_outputs: int = 0

    @abc.abstractmethod
    async def prepare(self, channel: grpc.aio.Channel, spec: LoadSpec) -> None:
        """Look the model up (sets ``n_features``/``n_outputs``); called once per run."""

    @abc.abstractmethod
    def driver(self, channel: grpc.aio.Channel, spec: LoadSpec, index: int) -> StreamDriver:
        """A driver for stream number ``index`` on ``channel``."""


class RnnstreamProtocol(StreamProtocol):
    """``rnnstream.v1.Predictor/Stream``: Open, then Steps with ``return_sequences``."""

    name = "rnnstream"

    def __init__(self) -> None:
        self.model = ""

    async def prepare(self, channel: grpc.aio.Channel, spec: LoadSpec) -> None:
        """ListModels: find the model (or the default) and its widths."""
        stub = pb_grpc.PredictorStub(channel)
        listing = await stub.ListModels(
            pb.ListModelsRequest(), timeout=spec.timeout_s, wait_for_ready=True
        )
        name = spec.model or listing.default_model
        infos = [m for m in listing.models if m.name == name]
        if not infos:
            served = ", ".join(sorted({m.name for m in listing.models})) or "none"
            raise LoadError(f"model {name!r} is not served at {spec.target}; served: {served}")
        info = max(infos, key=lambda m: (m.version.isdigit(), _version_key(m.version)))
        self.model = name
        self.n_features = int(info.n_features)
        self.n_outputs = int(info.n_outputs)

    def driver(self, channel: grpc.aio.Channel, spec: LoadSpec, index: int) -> StreamDriver:
        """A driver for one session."""
        return _RnnstreamDriver(channel, self, spec, index)


def _version_key(version: str) -> int:
    return int(version) if version.isdigit() else 0


class _RnnstreamDriver(StreamDriver):
    def __init__(
        self, channel: grpc.aio.Channel, protocol: RnnstreamProtocol, spec: LoadSpec, index: int
    ) -> None:
        self._stub = pb_grpc.PredictorStub(channel)
        self._protocol = protocol
        self._k = spec.steps_per_message
        rng = np.random.default_rng(index)
        x = rng.standard_normal(self._k * protocol.n_features).astype(np.float32)
        # Built once; request() only moves ``start`` on (the step index must advance, or
        # the server would treat the message as a retransmission and not run it).
        self._request = pb.StreamRequest(steps=pb.Steps(start=0, x=x.tolist()))
        self._steps = self._request.steps
        self._next = 0
        self._expected = self._k * protocol.n_outputs

    async def open(self) -> None:
        self.call = self._stub.Stream()  # type: ignore[call-arg]  # aio: no request iterator
        await self.call.write(
            pb.StreamRequest(open=pb.Open(model=self._protocol.model, return_sequences=True))
        )
        reply = await self.call.read()
        if reply is GRPC_EOF or reply.WhichOneof("kind") != "opened":
            raise LoadError(f"expected Opened, got {_describe(reply)}")
        self._next = int(reply.opened.next_step)

    def request(self) -> object:
        self._steps.start = self._next
        self._next += self._k
        return self._request

    def check(self, response: object) -> None:
        if (
            response is GRPC_EOF
            or response.WhichOneof("kind") != "outputs"  # type: ignore[attr-defined]
            or len(response.outputs.y) != self._expected  # type: ignore[attr-defined]
        ):
            raise LoadError(
                f"expected Outputs of {self._expected} values, got {_describe(response)}"
            )

    async def close(self) -> None:
        await self.call.write(pb.StreamRequest(end=pb.End(close=True)))
        await self.call.done_writing()
        for _ in range(4):  # Final, then the end of the stream
            if await self.call.read() is GRPC_EOF:
                return


def _describe(message: object) -> str:
    if message is GRPC_EOF:
        return "the end of the stream"
    kind = getattr(message, "WhichOneof", None)
    if kind is not None:
        which = kind("kind")
        if which == "outputs":
            return f"Outputs of {len(message.outputs.y)} values"  # type: ignore[attr-defined]
        if which == "ended":
            ended = message.ended  # type: ignore[attr-defined]
            return f"SessionEnded ({ended.message})"
        return str(which)
    return type(message).__name__


# --- the run ----------------------------------------------------------------------------------


class _Phases:
    """Lines the streams up: all warmed up -> measure together -> all done."""

    def __init__(self, streams: int) -> None:
        self.streams = streams
        self.warmed = 0
        self.finished = 0
        self.all_warmed = asyncio.Event()
        self.all_finished = asyncio.Event()
        self.go = asyncio.Event()
        self.until = math.inf  # perf_counter deadline of the measured phase

    def warm(self) -> None:
        self.warmed += 1
        if self.warmed >= self.streams:
            self.all_warmed.set()

    def finish(self) -> None:
        self.finished += 1
        if self.finished >= self.streams:
            self.all_finished.set()


@dataclass
class _StreamStats:
    latencies: list[float] = field(default_factory=list)
    messages: int = 0
    error: str | None = None


async def _lockstep(
    driver: StreamDriver, until: float, count: int, latencies: list[float] | None
) -> int:
    """Send, await the reply, repeat: until ``until`` or ``count`` messages."""
    perf = time.perf_counter
    write, read, request, check = driver.call.write, driver.call.read, driver.request, driver.check
    n = 0
    while n < count:
        sent = perf()
        if sent >= until:
            break
        await write(request())
        response = await read()
        done = perf()
        check(response)
        if latencies is not None and n < MAX_SAMPLES_PER_STREAM:
            latencies.append(done - sent)
        n += 1
    return n


async def _pipelined(
    driver: StreamDriver, window: int, until: float, count: int, latencies: list[float] | None
) -> int:
    """Keep ``window`` messages in flight: a writer and a reader on the same call."""
    perf = time.perf_counter
    call = driver.call
    sent_at: collections.deque[float | None] = collections.deque()
    room = asyncio.Semaphore(window)
    outstanding = asyncio.Semaphore(0)

    async def writer() -> None:
        n = 0
        try:
            while n < count:
                await room.acquire()
                now = perf()
                if now >= until:
                    break
                sent_at.append(now)
                await call.write(driver.request())
                outstanding.release()
                n += 1
        finally:
            sent_at.append(None)  # tells the reader nothing more comes
            outstanding.release()

    async def reader() -> int:
        n = 0
        while True:
            await outstanding.acquire()
            sent = sent_at.popleft()
            if sent is None:
                return n
            response = await call.read()
            done = perf()
            driver.check(response)
            room.release()
            if latencies is not None and n < MAX_SAMPLES_PER_STREAM:
                latencies.append(done - sent)
            n += 1

    write_task = asyncio.create_task(writer())
    try:
        received = await reader()
    finally:
        if not write_task.done():
            write_task.cancel()
        await asyncio.gather(write_task, return_exceptions=True)
    return received


async def _exchange(
    driver: StreamDriver,
    spec: LoadSpec,
    until: float,
    count: int,
    latencies: list[float] | None,
) -> int:
    if spec.window == 1:
        return await _lockstep(driver, until, count, latencies)
    return await _pipelined(driver, spec.window, until, count, latencies)


async def _run_stream(
    driver: StreamDriver, spec: LoadSpec, phases: _Phases, stats: _StreamStats
) -> None:
    """One stream: open, warm up, wait for the others, measure, close."""
    warmed = finished = False
    try:
        await asyncio.wait_for(driver.open(), spec.timeout_s)
        if spec.warmup_s > 0:
            await _exchange(driver, spec, time.perf_counter() + spec.warmup_s, _NO_LIMIT, None)
        warmed = True
        phases.warm()
        await phases.go.wait()
        count = spec.messages if spec.messages is not None else _NO_LIMIT
        stats.messages = await _exchange(driver, spec, phases.until, count, stats.latencies)
        finished = True
        phases.finish()
        # The measurement is done; a slow or failed goodbye changes nothing.
        with contextlib.suppress(asyncio.TimeoutError, grpc.RpcError):
            await asyncio.wait_for(driver.close(), min(spec.timeout_s, 10.0))
    except (TimeoutError, grpc.RpcError, LoadError, OSError) as exc:
        stats.error = _error_text(exc)
    finally:
        if not warmed:
            phases.warm()
        if not finished:
            phases.finish()
        call = getattr(driver, "call", None)
        if call is not None:
            call.cancel()


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"


def _percentiles(samples: np.ndarray) -> dict[str, float]:
    if samples.size == 0:
        return {
            "p50": math.nan,
            "p90": math.nan,
            "p99": math.nan,
            "mean": math.nan,
            "max": math.nan,
        }
    us = samples * 1e6
    p50, p90, p99 = np.percentile(us, [50, 90, 99])
    return {
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "mean": float(us.mean()),
        "max": float(us.max()),
    }


async def run_async(
    spec: LoadSpec,
    protocol: StreamProtocol | None = None,
    before_measuring: Callable[[], Awaitable[None]] | None = None,
) -> LoadResult:
    """Run one load against ``spec.target`` and return what it measured.

    ``before_measuring`` is awaited once every stream has warmed up, just before the
    measured phase starts: several load-generator processes use it to start measuring
    together.
    """
    protocol = protocol if protocol is not None else RnnstreamProtocol()
    options = [("grpc.use_local_subchannel_pool", 1)]  # one connection per channel
    channels = [
        grpc.aio.insecure_channel(spec.target, options=options) for _ in range(spec.n_channels)
    ]
    try:
        try:
            await asyncio.wait_for(protocol.prepare(channels[0], spec), spec.timeout_s)
        except TimeoutError:
            raise LoadError(
                f"cannot reach {spec.target}: no answer within {spec.timeout_s:g}s "
                "(is the server up? --timeout waits longer)"
            ) from None
        phases = _Phases(spec.streams)
        stats = [_StreamStats() for _ in range(spec.streams)]
        drivers = [
            protocol.driver(channels[i % len(channels)], spec, i) for i in range(spec.streams)
        ]
        tasks = [
            asyncio.create_task(_run_stream(d, spec, phases, s), name=f"loadgen-stream-{i}")
            for i, (d, s) in enumerate(zip(drivers, stats, strict=True))
        ]
        try:
            await asyncio.wait_for(phases.all_warmed.wait(), spec.timeout_s + spec.warmup_s)
            if before_measuring is not None:
                await before_measuring()
            server0 = tree_cpu_seconds(spec.server_pid) if spec.server_pid else None
            client0 = time.process_time()
            began = time.perf_counter()
            if spec.messages is None:
                phases.until = began + spec.duration_s
            else:
                phases.until = began + spec.timeout_s
            phases.go.set()
            await asyncio.wait_for(
                phases.all_finished.wait(), (phases.until - began) + spec.timeout_s
            )
            ended = time.perf_counter()
            client1 = time.process_time()
            server1 = tree_cpu_seconds(spec.server_pid) if spec.server_pid else None
            await asyncio.wait_for(asyncio.gather(*tasks), 15.0)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        for channel in channels:
            await channel.close(None)

    messages = sum(s.messages for s in stats)
    errors = [s.error for s in stats if s.error is not None]
    elapsed = max(ended - began, 1e-9)
    latencies = np.concatenate([np.asarray(s.latencies, dtype=np.float64) for s in stats])
    per_msg = 1e6 / messages if messages else math.nan
    return LoadResult(
        label=spec.label or protocol.name,
        target=spec.target,
        streams=spec.streams,
        window=spec.window,
        steps_per_message=spec.steps_per_message,
        channels=len(channels),
        elapsed_s=elapsed,
        messages=messages,
        timesteps=messages * spec.steps_per_message,
        errors=len(errors),
        error_messages=errors[:MAX_ERRORS_KEPT],
        msg_per_s=messages / elapsed,
        timesteps_per_s=messages * spec.steps_per_message / elapsed,
        latency_us=_percentiles(latencies),
        server_cpu_us_per_msg=(
            (server1 - server0) * per_msg if server0 is not None and server1 is not None else None
        ),
        client_cpu_us_per_msg=(client1 - client0) * per_msg,
        n_features=protocol.n_features,
        n_outputs=protocol.n_outputs,
    )


def run(
    spec: LoadSpec,
    protocol: StreamProtocol | None = None,
    before_measuring: Callable[[], Awaitable[None]] | None = None,
) -> LoadResult:
    """Run one load on a fresh event loop (see :func:`run_async`)."""
    return asyncio.run(run_async(spec, protocol, before_measuring))
