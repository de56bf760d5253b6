"""The gRPC server: wire the core together, serve, and drain gracefully.

``start(settings)`` loads the model repository, starts a ``grpc.aio`` server with the
Predictor service, ``grpc.health.v1`` and server reflection, and returns a
``RunningServer`` that knows its port (``--port 0`` picks a free one). ``serve`` runs until
SIGTERM or SIGINT, then drains: health turns NOT_SERVING, new work is refused, live
streams are told the server is draining, in-flight steps finish, and it returns 0.
``BackgroundServer`` runs the same server on a thread of its own (tests, benchmarks,
embedding).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import grpc
from google.protobuf import message_factory
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from rnnstream.server import codec, session_snapshot, snapshot
from rnnstream.server.metrics import Metrics
from rnnstream.server.repository import ModelRepository
from rnnstream.server.servicer import PredictorServicer
from rnnstream.server.sessions import SessionManager
from rnnstream.server.settings import Settings
from rnnstream.v1 import rnnstream_pb2 as pb

log = logging.getLogger(__name__)

PREDICTOR = pb.DESCRIPTOR.services_by_name["Predictor"]
SERVICE_NAME = PREDICTOR.full_name
REAPER_PERIOD_S = 1.0


@dataclass
class RunningServer:
    """A started server: its port and the parts behind it."""

    server: grpc.aio.Server
    port: int
    repository: ModelRepository
    sessions: SessionManager
    health: Any  # grpc_health.v1.health.aio.HealthServicer (untyped)
    settings: Settings
    metrics: Metrics
    _tasks: list[asyncio.Task[None]]

    @property
    def address(self) -> str:
        """``host:port`` to connect to (loopback when listening on all addresses)."""
        host = self.settings.host
        if host in ("0.0.0.0", "::", "[::]", ""):
            host = "127.0.0.1"
        return f"{host}:{self.port}"

    async def stop(self, grace: float | None = None) -> None:
        """Drain: NOT_SERVING, refuse new work, end live streams, finish in-flight, snapshot."""
        grace = self.settings.grace_s if grace is None else grace
        await self.health.enter_graceful_shutdown()
        self.sessions.drain()
        await self.server.stop(grace)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.sessions.settle_all()
        await save_snapshot(self.sessions, self.settings)
        await asyncio.get_running_loop().run_in_executor(None, self.repository.close)
        self.metrics.close()
        log.info("stopped")


def add_predictor(servicer: Any, server: grpc.aio.Server) -> None:
    """Register every Predictor method from the service descriptor; Stream with the lean codec.

    The other methods get the generated (de)serializers, so a method added to the proto is
    served without edits here.
    """
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in PREDICTOR.methods:
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        deserialize: Callable[[bytes], Any] = request_class.FromString
        serialize: Callable[[Any], bytes] = response_class.SerializeToString
        if method.name == "Stream":
            deserialize, serialize = codec.read_stream_request, codec.write_stream_response
        factory = _HANDLER_FACTORIES[(method.client_streaming, method.server_streaming)]
        handlers[method.name] = factory(
            getattr(servicer, method.name),
            request_deserializer=deserialize,
            response_serializer=serialize,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)  # type: ignore[attr-defined]


_HANDLER_FACTORIES: dict[tuple[bool, bool], Callable[..., grpc.RpcMethodHandler]] = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


async def save_snapshot(sessions: SessionManager, settings: Settings) -> None:
    """Write every session to the state directory (when there is one).

    The records are taken on the event loop (consistent with in-flight steps); the file is
    written on a worker thread, so streams are served meanwhile.
    """
    path = settings.snapshot_path
    if path is None:
        return
    groups = session_snapshot.take(sessions)
    loop = asyncio.get_running_loop()
    count = await loop.run_in_executor(None, snapshot.write, path, groups)
    log.info("snapshot: %d sessions written to %s", count, path)


def restore_snapshot(sessions: SessionManager, settings: Settings) -> None:
    """Bring back the sessions of the last snapshot, if there is one."""
    path = settings.snapshot_path
    if path is None or not path.exists():
        return
    try:
        written_at, groups = snapshot.read(path)
    except (OSError, ValueError, KeyError) as exc:
        log.error("snapshot %s is unreadable, starting without it: %s", path, exc)
        return
    restored = session_snapshot.restore(sessions, groups)
    age = time.time() - written_at
    log.info(
        "restored %d sessions from %s (written %.1fs ago); %d refused",
        restored,
        path,
        age,
        len(sessions.refused),
    )
    for session_id, reason in list(sessions.refused.items())[:20]:
        log.warning(
            "session %s not restored: %s", session_id, reason, extra={"session_id": session_id}
        )


async def _snapshot_periodically(sessions: SessionManager, settings: Settings) -> None:
    """Snapshot every ``snapshot_interval_s``: what a crash (kill -9) can lose is bounded."""
    while True:
        await asyncio.sleep(settings.snapshot_interval_s)
        try:
            await save_snapshot(sessions, settings)
        except OSError as exc:
            log.error("periodic snapshot failed: %s", exc)


async def _reap(sessions: SessionManager) -> None:
    """End idle sessions past their TTL, once a second."""
    while True:
        await asyncio.sleep(REAPER_PERIOD_S)
        expired = sessions.expire_idle()
        if expired:
            log.info("expired %d idle sessions", len(expired))


async def start(settings: Settings) -> RunningServer:
    """Load the models and start serving; returns once the port is bound."""
    repository = ModelRepository.load(settings)
    sessions = SessionManager(repository, settings)
    restore_snapshot(sessions, settings)
    metrics = Metrics(sessions)
    for model in repository.models():
        model.engine.on_batch = metrics.batch_size.observe
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            # grpc Python reuses ports by default: a second server would silently share it.
            ("grpc.so_reuseport", 0),
        ]
    )
    add_predictor(PredictorServicer(repository, sessions, settings, metrics), server)
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [
            SERVICE_NAME,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    address = f"{settings.host}:{settings.port}"
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:
        repository.close()
        raise OSError(
            f"cannot listen on {address}: {exc} (is the port in use? try --port)"
        ) from exc
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    tasks = [asyncio.create_task(_reap(sessions), name="session-reaper")]
    if settings.snapshot_interval_s > 0:
        tasks.append(asyncio.create_task(_snapshot_periodically(sessions, settings)))
    if settings.metrics_port:
        metrics.serve(settings.metrics_port, settings.host)
    running = RunningServer(
        server, port, repository, sessions, health_servicer, settings, metrics, tasks
    )
    models = ", ".join(m.key for m in repository.models())
    log.info(
        "serving %s on %s:%d (default model %s)",
        models,
        settings.host,
        port,
        repository.default_name,
    )
    return running


async def serve_until_signal(settings: Settings) -> int:
    """Serve until SIGTERM or SIGINT, then drain; the process exit code."""
    running = await start(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("signal received: draining (grace %.1fs)", settings.grace_s)
    await running.stop()
    return 0


class BackgroundServer:
    """A server on a thread and event loop of its own; a context manager.

    Example::

        with BackgroundServer(Settings.from_env(port=0, host="127.0.0.1")) as server:
            client = rnnstream.Client(server.address)
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="rnnstream-server", daemon=True
        )
        self.running: RunningServer | None = None

    def start(self) -> BackgroundServer:
        """Start the loop thread and the server on it; returns once serving."""
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(start(self.settings), self._loop)
        try:
            self.running = future.result(timeout=120)
        except BaseException:
            self._shutdown_loop()
            raise
        return self

    @property
    def port(self) -> int:
        """The bound port."""
        assert self.running is not None, "start() first"
        return self.running.port

    @property
    def address(self) -> str:
        """``host:port`` for clients."""
        assert self.running is not None, "start() first"
        return self.running.address

    def call(self, func: object) -> object:
        """Run a plain callable on the server's loop thread and return its result."""

        async def run() -> object:
            return func()  # type: ignore[operator]

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=60)

    def stop(self, grace: float | None = 1.0) -> None:
        """Drain and stop the server, then the loop thread."""
        if self.running is not None:
            asyncio.run_coroutine_threadsafe(self.running.stop(grace), self._loop).result(
                timeout=120
            )
            self.running = None
        self._shutdown_loop()

    def _shutdown_loop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
        if not self._loop.is_running():
            self._loop.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
