"""The rnnstream gRPC server: ``Server`` is the entry point.

``Server(settings)`` is one server over one model repository. ``await server.start()`` loads
the models and serves Predictor, KServe v2, ``grpc.health.v1`` and server reflection on
``settings.host:settings.port`` (TLS only with ``--tls-cert``; callers authenticated as
``rnnstream.server.auth`` says; ``reload()``, on SIGHUP, re-reads those files); ``port``
and ``address`` say where (``--port 0`` picks a free port). ``await server.stop()``
drains: health turns NOT_SERVING, new work is refused, live
streams are told the server is draining, in-flight steps finish, the sessions are written to
the state directory (with ``--store``: checkpointed to the store, their leases released),
the metrics endpoint and the engines are closed, and (with ``--otel``) the last spans are
exported. ``await
server.serve()`` is ``rnnstream serve``: start, wait for SIGTERM or SIGINT, stop, exit 0.

Each start step registers what undoes it, and stopping undoes the steps in reverse. A step
that fails undoes the ones before it, so a server that cannot start (a port in use, a model
that does not load) leaves no engine thread, listening port or endpoint behind and raises.
A ``Server`` starts once (make a new one to serve again); ``stop`` may be called any number
of times.

``BackgroundServer`` runs a ``Server`` on a thread and event loop of its own (tests,
benchmarks, embedding).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, TypeVar

import grpc
from google.protobuf import message_factory
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from rnnstream.server import codec, kserve_servicer, session_snapshot, snapshot, tracing
from rnnstream.server.metrics import Metrics
from rnnstream.server.moves import SessionMover
from rnnstream.server.ownership import Ownership
from rnnstream.server.repository import ModelRepository
from rnnstream.server.security import Security, start_warnings
from rnnstream.server.servicer import PredictorServicer
from rnnstream.server.sessions import SessionManager
from rnnstream.server.settings import Settings
from rnnstream.server.store import SessionStore, StoreError, StoreUnavailable, open_store
from rnnstream.v1 import rnnstream_pb2 as pb

log = logging.getLogger(__name__)

PREDICTOR = pb.DESCRIPTOR.services_by_name["Predictor"]
SERVICE_NAME = PREDICTOR.full_name
REAPER_PERIOD_S = 1.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
RELOAD_SIGNAL = signal.SIGHUP

_T = TypeVar("_T")


class Server:
    """One rnnstream server over one model repository; see the module docstring.

    Example::

        server = Server(Settings.from_env(port=0, host="127.0.0.1"))
        await server.start()
        client = rnnstream.Client(server.address)
        ...
        await server.stop()
    """

    def __init__(self, settings: Settings, tracer: tracing.Tracing | None = None) -> None:
        """``tracer``: what traces the calls and steps (default: as ``settings.otel`` says).

        The server shuts it down when it stops.
        """
        self.settings = settings
        self._tracer = tracer
        self._state = "new"  # then "started", then "stopped"; never back
        self._undo = contextlib.AsyncExitStack()
        self._grace = settings.grace_s
        self._port: int | None = None
        self._repository: ModelRepository | None = None
        self._sessions: SessionManager | None = None
        self._metrics: Metrics | None = None
        self._security: Security | None = None

    @property
    def port(self) -> int:
        """The port the gRPC server listens on (the one picked when ``settings.port`` is 0)."""
        return _started(self._port)

    @property
    def address(self) -> str:
        """``host:port`` to connect to (loopback when listening on all addresses)."""
        host = self.settings.host
        if host in ("0.0.0.0", "::", "[::]", ""):
            host = "127.0.0.1"
        return f"{host}:{self.port}"

    @property
    def repository(self) -> ModelRepository:
        """The models served."""
        return _started(self._repository)

    @property
    def sessions(self) -> SessionManager:
        """Every session the server holds."""
        return _started(self._sessions)

    @property
    def metrics(self) -> Metrics:
        """The server's Prometheus metrics."""
        return _started(self._metrics)

    async def start(self) -> None:
        """Load the models and start serving; returns once the port is bound.

        On failure everything started so far is stopped again before the error is raised:
        ``ModelLoadError`` when a model does not load, ``OSError`` when a port is taken.
        """
        if self._state != "new":
            raise RuntimeError(f"this server was {self._state}: a Server starts once")
        self._state = "started"
        try:
            await self._start_steps()
        except BaseException:
            self._state = "stopped"
            await self._undo.aclose()
            raise

    async def stop(self, grace: float | None = None) -> None:
        """Drain, then undo every start step in reverse; harmless when stopped or never started.

        In-flight calls get ``grace`` seconds to finish (default ``settings.grace_s``).
        """
        if self._state != "started":
            return
        self._state = "stopped"
        self._grace = self.settings.grace_s if grace is None else grace
        await self._undo.aclose()
        log.info("stopped")

    def reload(self) -> bool:
        """Re-read the token file and the TLS certificate and key (SIGHUP); whether all were valid.

        Live streams go on; new calls see the new tokens, new connections the new
        certificate. A file that is no longer valid is logged and the previous one stays.
        """
        return _started(self._security).reload()

    async def serve(self) -> int:
        """Start, serve until SIGTERM or SIGINT, then drain; the process exit code (0).

        SIGHUP meanwhile re-reads the credentials (``reload``).
        """
        await self.start()
        signalled = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, signalled.set)
        loop.add_signal_handler(RELOAD_SIGNAL, self.reload)
        try:
            await signalled.wait()
            log.info("signal received: draining (grace %.1fs)", self.settings.grace_s)
        finally:
            # The handlers stay through the drain: a second signal does not cut it short.
            await self.stop()
            for sig in (*STOP_SIGNALS, RELOAD_SIGNAL):
                loop.remove_signal_handler(sig)
        return 0

    async def _start_steps(self) -> None:
        """Each step, then what undoes it: ``stop`` and a failed start run those in reverse."""
        settings = self.settings
        # First: a token, certificate or key file that cannot be used stops the start here.
        security = self._security = Security.from_settings(settings)
        tracer = self._tracer or tracing.setup(settings.otel)
        self._undo.push_async_callback(_off_loop, tracer.shutdown)  # last: the drain's spans
        if not settings.worker:  # a supervisor warns once for all its workers
            for warning in start_warnings(settings):
                log.warning("%s", warning)
        repository = ModelRepository.load(settings)  # cleans up after itself when it fails
        self._repository = repository
        self._undo.push_async_callback(_off_loop, repository.close)

        mover: SessionMover | None = None
        if settings.store:
            store = await open_checked_store(settings)
            self._undo.push_async_callback(store.close)
            ownership = Ownership(store, settings.lease_ttl_s)
            sessions = SessionManager(repository, settings, ownership=ownership, tracer=tracer)
            mover = sessions.mover = SessionMover(sessions, ownership)
        else:
            sessions = SessionManager(repository, settings, tracer=tracer)
            restore_snapshot(sessions, settings)
        self._sessions = sessions
        metrics = Metrics(sessions)
        self._metrics = metrics
        for model in repository.models():
            model.engine.on_batch = metrics.batch_size.observe
        # Before the gRPC port, so that /metrics stays up while the server drains.
        if settings.metrics_port:
            serve_metrics(metrics, settings)
            self._undo.callback(metrics.close)

        server = grpc.aio.server(
            options=grpc_options(settings),
            interceptors=tracer.interceptors((SERVICE_NAME, kserve_servicer.SERVICE_NAME)),
        )
        servicer = PredictorServicer(
            repository, sessions, settings, metrics, security.authenticator
        )
        add_predictor(servicer, server)
        kserve_servicer.add_kserve(
            kserve_servicer.KServeServicer(
                repository, sessions, settings, metrics, security.authenticator
            ),
            server,
        )
        health_servicer = add_health_and_reflection(server, settings.reflection)
        self._port = bind(server, settings, security)
        # A bound grpc server frees its port only once started and stopped: nothing that can
        # fail comes between the two.
        await server.start()
        tasks: list[asyncio.Task[None]] = []
        self._undo.push_async_callback(self._drain, server, health_servicer, tasks, mover)

        tasks.append(asyncio.create_task(_reap(sessions), name="session-reaper"))
        if mover is not None:
            tasks.append(
                asyncio.create_task(mover.run(settings.snapshot_interval_s), name="session-moves")
            )
            # Grants to this process are sent to its inbox: listen before taking sessions.
            try:
                await asyncio.wait_for(mover.listening.wait(), settings.lease_ttl_s)
            except TimeoutError:
                log.warning("not yet listening to the store inbox: moves wait for lease expiry")
        elif settings.snapshot_interval_s > 0:
            tasks.append(
                asyncio.create_task(
                    _snapshot_periodically(sessions, settings), name="periodic-snapshot"
                )
            )
        for name in ("", SERVICE_NAME, kserve_servicer.SERVICE_NAME):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "serving %s on %s:%d (default model %s)",
            ", ".join(m.key for m in repository.models()),
            settings.host,
            self._port,
            repository.default_name,
        )

    async def _drain(
        self,
        server: grpc.aio.Server,
        health_servicer: Any,
        tasks: list[asyncio.Task[None]],
        mover: SessionMover | None,
    ) -> None:
        """Undo serving: refuse new work, then write down every session.

        Health turns NOT_SERVING, live streams end (DRAINING), in-flight calls get the grace to
        finish, the background tasks stop, in-flight steps settle, and the snapshot is written
        (with a store: every session is checkpointed and its lease released, so another
        process takes it at once).
        """
        sessions = self.sessions
        await health_servicer.enter_graceful_shutdown()
        sessions.drain()
        await server.stop(self._grace)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await sessions.settle_all()
        if mover is not None:
            await mover.drain()
        else:
            await save_snapshot(sessions, self.settings)


class BackgroundServer:
    """A ``Server`` on a thread and event loop of its own; a context manager.

    ``running`` is the ``Server`` from ``start()`` until ``stop()``. Like a ``Server``, it
    starts once and may be stopped any number of times.

    Example::

        with BackgroundServer(Settings.from_env(port=0, host="127.0.0.1")) as server:
            client = rnnstream.Client(server.address)
    """

    def __init__(self, settings: Settings, tracer: tracing.Tracing | None = None) -> None:
        """``tracer``: as for ``Server``."""
        self.settings = settings
        self._tracer = tracer
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="rnnstream-server", daemon=True
        )
        self.running: Server | None = None

    def start(self) -> BackgroundServer:
        """Start the loop thread and the server on it; returns once serving."""
        self._thread.start()
        server = Server(self.settings, self._tracer)
        try:
            self._run(server.start(), timeout=120)
        except BaseException:
            self._shutdown_loop()
            raise
        self.running = server
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

    def call(self, func: Callable[[], _T]) -> _T:
        """Run a plain callable on the server's loop thread and return its result."""

        async def run() -> _T:
            return func()

        return self._run(run(), timeout=60)

    def stop(self, grace: float | None = 1.0) -> None:
        """Drain and stop the server, then the loop thread."""
        try:
            if self.running is not None:
                self._run(self.running.stop(grace), timeout=120)
                self.running = None
        finally:
            self._shutdown_loop()

    def _run(self, coroutine: Coroutine[Any, Any, _T], timeout: float) -> _T:
        """Run ``coroutine`` on the loop thread and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=timeout)

    def _shutdown_loop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
        if not self._loop.is_running() and not self._loop.is_closed():
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


def _started(part: _T | None) -> _T:
    """``part``, which exists once the server has started."""
    if part is None:
        raise RuntimeError("the server is not started: await start() first")
    return part


async def _off_loop(func: Callable[[], None]) -> None:
    """Run a blocking call on a worker thread, so the loop keeps serving meanwhile."""
    await asyncio.get_running_loop().run_in_executor(None, func)


def grpc_options(settings: Settings) -> list[tuple[str, int]]:
    """The grpc server's channel arguments."""
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        # grpc Python reuses ports by default: a second server would silently share it.
        # Workers of one supervisor share it on purpose (SO_REUSEPORT).
        ("grpc.so_reuseport", 1 if settings.worker else 0),
        # Calls no handler has picked up yet pile up when every client reconnects at once;
        # between the two limits grpc refuses new ones at random, more of them the fuller.
        ("grpc.server.max_pending_requests", settings.max_pending_requests),
        ("grpc.server.max_pending_requests_hard_limit", 2 * settings.max_pending_requests),
    ]


def bind(server: grpc.aio.Server, settings: Settings, security: Security) -> int:
    """Listen on ``settings.host:settings.port`` (TLS only, with a certificate); the port bound.

    OSError when it is taken.
    """
    address = f"{settings.host}:{settings.port}"
    try:
        if security.tls is not None:
            return server.add_secure_port(address, security.tls.credentials())
        return server.add_insecure_port(address)
    except RuntimeError as exc:
        raise OSError(
            f"cannot listen on {address}: {exc} (is the port in use? try --port)"
        ) from exc


def serve_metrics(metrics: Metrics, settings: Settings) -> None:
    """Serve ``/metrics`` on ``settings.metrics_port``. OSError when the port is taken.

    A worker's own metrics are its supervisor's to gather: loopback only.
    """
    host = "127.0.0.1" if settings.worker else settings.host
    try:
        metrics.serve(settings.metrics_port, host)
    except OSError as exc:
        raise OSError(
            f"cannot serve metrics on {host}:{settings.metrics_port}: {exc} "
            "(is the port in use? try --metrics-port)"
        ) from exc


def add_health_and_reflection(server: grpc.aio.Server, with_reflection: bool = True) -> Any:
    """Register ``grpc.health.v1`` (NOT_SERVING until set) and, if asked, server reflection.

    Health asks no token: load balancers and orchestrators check it as they are.
    Returns the health servicer (``grpc_health.v1.health.aio.HealthServicer``, untyped).
    """
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if not with_reflection:
        return health_servicer
    reflection.enable_server_reflection(
        [
            SERVICE_NAME,
            kserve_servicer.SERVICE_NAME,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    return health_servicer


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


async def open_checked_store(settings: Settings) -> SessionStore:
    """The ``--store`` session store, checked reachable; StoreError in one line if not."""
    try:
        store = open_store(settings.store, settings.state_dir)
    except ValueError as exc:
        raise StoreError(str(exc)) from None
    try:
        await store.check()
    except StoreUnavailable as exc:
        await store.close()
        problem = " ".join(str(exc).split())
        raise StoreUnavailable(f"--store: the session store cannot be used: {problem}") from None
    return store


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
