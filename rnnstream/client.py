"""The blocking client: ``Client`` (unary calls) and ``Session`` (one stateful stream).

Example (many-to-many: a forecast every step)::

    import numpy as np
    import rnnstream

    with rnnstream.Client("localhost:50051") as client:
        with client.session(model="seattle-temp") as session:
            for reading in [51.2, 50.8, 50.1]:
                y = session.step([reading])        # [n_outputs]: next hour's forecast
            Y = session.steps(np.array([[49.9], [49.5]]))   # [2, n_outputs]
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc
import numpy as np
from numpy.typing import ArrayLike

from rnnstream import _codec
from rnnstream._client_base import (
    DEFAULT_ADDRESS,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_TIMEOUT_S,
    ClientBase,
    backoff_delay,
    channel_credentials,
)
from rnnstream._health import health_check_call, health_request, health_status
from rnnstream._resend import DEFAULT_RESEND_BUFFER_STEPS
from rnnstream._session import (
    END_OF_STREAM,
    HALF_CLOSE,
    Phase,
    SessionCore,
    SessionView,
    ended_unexpectedly,
    unwrap,
)
from rnnstream._session_id import Metadata, routing_metadata
from rnnstream.errors import RnnstreamError, UnavailableError, from_rpc_error
from rnnstream.info import ModelInfo, SessionInfo
from rnnstream.v1 import rnnstream_pb2 as pb
from rnnstream.v1 import rnnstream_pb2_grpc as pb_grpc

T = TypeVar("T")


class _Stream:
    """One attempt at the Stream RPC: requests through a queue, responses read on a thread.

    The reader thread lets ``recv`` wait with a timeout; a stream that stays silent longer
    than that is treated as dropped.
    """

    def __init__(self, stub: pb_grpc.PredictorStub, metadata: Metadata) -> None:
        self._requests: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._responses: queue.SimpleQueue[object] = queue.SimpleQueue()
        self.call: Any = stub.Stream(self._request_iterator(), metadata=metadata)
        self._reader = threading.Thread(target=self._read, name="rnnstream-reader", daemon=True)
        self._reader.start()

    def _request_iterator(self) -> Iterator[pb.StreamRequest]:
        while True:
            item = self._requests.get()
            if item is END_OF_STREAM:
                return
            assert isinstance(item, pb.StreamRequest)
            yield item

    def _read(self) -> None:
        try:
            for response in self.call:
                self._responses.put(response)
            self._responses.put(END_OF_STREAM)
        except grpc.RpcError as err:
            self._responses.put(from_rpc_error(err))
        except Exception as err:  # never let the thread die silently
            self._responses.put(
                RnnstreamError(f"the stream failed: {err!r}", grpc.StatusCode.UNKNOWN)
            )

    def send(self, request: pb.StreamRequest | None) -> None:
        """Write a message; None half-closes."""
        self._requests.put(END_OF_STREAM if request is HALF_CLOSE else request)

    def recv(self, timeout: float | None) -> pb.StreamResponse | None:
        """The next response, None at the end of the stream; raises the stream's error."""
        try:
            item = self._responses.get(timeout=timeout)
        except queue.Empty:
            raise UnavailableError(
                f"no answer from the server within {timeout:g}s",
                grpc.StatusCode.DEADLINE_EXCEEDED,
            ) from None
        return unwrap(item)

    def poll(self) -> object:
        """A response that already arrived, ``END_OF_STREAM`` at the end, or None if none yet."""
        try:
            item = self._responses.get_nowait()
        except queue.Empty:
            return None
        return END_OF_STREAM if item is END_OF_STREAM else unwrap(item)

    def cancel(self) -> None:
        """Drop the stream (the server keeps the session) and release the threads."""
        self.call.cancel()
        self._requests.put(END_OF_STREAM)
        self._reader.join(timeout=5)


class Session(SessionView):
    """One stateful session on the server, over a bidirectional stream; a context manager.

    Get one from :meth:`Client.session`. The server keeps the recurrent state between
    calls; if the connection drops, the session reconnects, resumes by id and resends what
    the server has not acknowledged, so each step is applied once and each output returned
    once. Leaving the ``with`` block half-closes the stream; the session stays resumable
    by ``id`` until the server's idle TTL.

    Example (many-to-one: one answer per sequence)::

        with client.session(model="tiny-m2o") as s:
            s.steps(X)          # [T, F]; returns an empty [0, O] array
            y = s.end()         # [O]: the answer for the whole sequence
    """

    def __init__(
        self,
        client: Client,
        core: SessionCore,
    ) -> None:
        self._client = client
        self._core = core
        self._stream: _Stream | None = None
        self._closed = False
        self.reconnects = 0
        self.states: np.ndarray | None = None
        try:
            self._run(lambda: self._core.opened)
        except BaseException:
            self._discard_stream()  # a refused Open leaves no stream (nor its threads) behind
            raise

    # -- public ---------------------------------------------------------------------------

    def step(self, x: ArrayLike) -> np.ndarray:
        """Send one time step ``x [F]``; returns ``y [O]`` (many-to-one: an empty ``[0]``).

        Example::

            y = session.step([51.2])
        """
        y = self.steps(_codec.check_step(x, self.model.n_features))
        return y[0] if len(y) else np.empty(0, dtype=np.float32)

    def steps(self, x: ArrayLike) -> np.ndarray:
        """Send ``X [T, F]`` in chunks; returns ``Y [T, O]`` (many-to-one: ``[0, O]``).

        With ``return_state`` the states of these steps are in ``session.states [T, S]``.

        Example::

            Y = session.steps(np.random.randn(100, session.model.n_features))
        """
        arr = _codec.check_steps(x, self.model.n_features)
        core = self._core
        self._begin()
        core.enqueue(arr)
        self._run(core.drained)
        y, self.states = core.take_outputs(len(arr))
        return y

    def end(self, reset: bool = True) -> np.ndarray:
        """End the current sequence; returns its last ``y [O]`` (empty if it had no steps).

        With ``reset`` the next sequence starts from the initial state; step numbering
        continues either way.

        Example::

            label_scores = session.end()
        """
        core = self._core
        self._begin()
        core.end_request = pb.End(reset=reset)
        self._run(lambda: core.final is not None)
        return core.final_y()

    def close(self) -> None:
        """Half-close the stream; steps still unacknowledged are applied first.

        The server ends the current sequence (keeping the state) and the session waits,
        resumable by ``id``, until its idle TTL. Idempotent.
        """
        if self._closed:
            return
        core = self._core
        core.close()
        if self._stream is not None or core.pending:
            self._run(lambda: False)
        self._closed = True
        self._discard_stream()

    def delete(self) -> None:
        """End the session on the server now and free its state; it cannot be resumed."""
        self._discard_stream()
        self._closed = True
        self._core.close()
        self._client.delete_session(self.id)

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.close()
        else:  # do not block an error on a flush; the session stays resumable
            self._closed = True
            self._core.close()
            self._discard_stream()

    def __repr__(self) -> str:
        model = self._core.info.key if self._core.info else self._core.requested_model
        return f"Session(id={self.id!r}, model={model!r}, next_step={self.next_step})"

    # -- the stream -----------------------------------------------------------------------

    def _begin(self) -> None:
        if self._closed:
            raise RuntimeError(f"session {self.id} is closed: open it again by id to continue")
        self._core.begin_call()
        if self._core.phase is Phase.RESYNC:  # after an error: learn where it stands first
            self._run(lambda: self._core.phase is not Phase.RESYNC)

    def _connect(self) -> None:
        """Open a stream, send Open, take Opened; resolve an End that may have been lost."""
        core = self._core
        resuming = core.opened
        self._stream = stream = _Stream(
            self._client._stub, self._client._metadata(routing_metadata(core.id))
        )
        stream.send(core.open_request())
        if core.on_open_answer(stream.recv(self._client.timeout)):
            core.resolve_end(self._client.get_session(core.id).sequence_steps)
        if resuming:
            self.reconnects += 1

    def _run(self, done: Callable[[], bool]) -> None:
        """Write what is due and read answers until ``done()``, reconnecting as needed."""
        core = self._core
        failures = 0
        while True:
            try:
                if self._stream is None:
                    self._connect()
                stream = self._stream
                assert stream is not None
                for request in core.sendable():
                    stream.send(request)
                if done():
                    core.take_ready(stream.poll)  # surface what already arrived (an error?)
                    if done():
                        return
                response = stream.recv(self._client.timeout)
                if response is None:
                    if core.phase is Phase.HALF_CLOSED:
                        return  # the server finished after our half-close
                    raise ended_unexpectedly()
                core.on_response(response)
                failures = 0
            except RnnstreamError as exc:
                self._discard_stream()
                if core.on_stream_error(exc, failures, self._client.max_retries):
                    return
                failures += 1
                time.sleep(backoff_delay(self._client.backoff, failures))

    def _discard_stream(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            stream.cancel()


class Client(ClientBase):
    """A connection to an rnnstream server; a context manager that closes its channel.

    ``timeout`` bounds each unary call and each wait for an answer on a stream.
    Sessions reconnect (and Opens a server sheds are tried again) up to ``max_retries``
    times in a row, waiting a random time up to ``backoff`` seconds, doubling, between
    tries. Each session keeps up to ``resend_buffer_steps`` acknowledged steps that the
    server's session store does not hold yet, to resend should the server crash.

    ``token`` is sent with every call and stream as ``authorization: Bearer TOKEN`` (over
    plaintext too: use TLS where the network is not trusted). ``tls=True`` (or any PEM
    argument) connects over TLS: ``root_certificates`` the CA(s) to trust (None: the
    system's), ``certificate_chain`` and ``private_key`` the client's certificate for a
    server that asks for one (mutual TLS). Automatic resume reconnects the same way.

    Example::

        with rnnstream.Client("localhost:50051") as client:
            for info in client.models():
                print(info.name, info.n_features, info.n_outputs)
            Y = client.predict(np.zeros((4, 24, 1)), model="seattle-temp")   # [4, 24, 1]

        secure = rnnstream.Client("inference.internal:50051", token=os.environ["TOKEN"],
                                  tls=True, root_certificates=open("ca.pem", "rb").read())
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        timeout: float | None = DEFAULT_TIMEOUT_S,
        options: Sequence[tuple[str, Any]] | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        max_retries: int = 5,
        backoff: float = 0.1,
        resend_buffer_steps: int = DEFAULT_RESEND_BUFFER_STEPS,
        token: str | None = None,
        tls: bool = False,
        root_certificates: bytes | None = None,
        certificate_chain: bytes | None = None,
        private_key: bytes | None = None,
    ) -> None:
        super().__init__(address, timeout, max_retries, backoff, resend_buffer_steps, token)
        opts = list(options or [])
        credentials = channel_credentials(
            tls, root_certificates, certificate_chain, private_key, credentials
        )
        self._channel = (
            grpc.secure_channel(address, credentials, options=opts)
            if credentials is not None
            else grpc.insecure_channel(address, options=opts)
        )
        self._stub = pb_grpc.PredictorStub(self._channel)

    def _call(
        self,
        method: Callable[..., T],
        request: object,
        retry: bool = True,
        metadata: Metadata | None = None,
    ) -> T:
        """A unary call with the SDK's error mapping and retries on UNAVAILABLE."""
        failures = 0
        while True:
            try:
                return method(request, timeout=self.timeout, metadata=self._metadata(metadata))
            except grpc.RpcError as err:
                delay = self._retry_delay(err, failures, retry)
                failures += 1
                time.sleep(delay)

    def models(self) -> list[ModelInfo]:
        """Every model version the server serves."""
        response: pb.ListModelsResponse = self._call(self._stub.ListModels, pb.ListModelsRequest())
        return self._remember_models(response)

    def default_model(self) -> str:
        """The model an empty ``model`` selects (from the last ``models()`` if any)."""
        if not self._models:
            self.models()
        return self._default_model

    def _n_features(self, model: str, version: str) -> int | None:
        """The model's width if the (cached) model list pins it down, for client-side checks."""
        if not self._models:
            self.models()
        return self._cached_n_features(model, version)

    def session(
        self,
        model: str = "",
        version: str = "",
        *,
        return_sequences: bool | None = None,
        return_state: bool = False,
        session_id: str | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        window: int = 1,
        resend_buffer_steps: int | None = None,
    ) -> Session:
        """Open a new session under a new id (or resume ``session_id``) and return it.

        ``return_sequences`` None uses the model's default mode. ``chunk_size`` steps go
        in one message and up to ``window`` messages are in flight at once; keep
        ``chunk_size * window`` at or below the server's replay cache (64 steps by
        default) so outputs survive a reconnect. ``resend_buffer_steps`` None: the
        client's.

        Example::

            with client.session("seattle-temp", return_state=True) as s:
                y = s.step([51.0]); h = s.state
            again = client.session(session_id=s.id)   # resume it later
        """
        core = SessionCore(
            model=model,
            version=version,
            return_sequences=return_sequences,
            return_state=return_state,
            session_id=session_id,
            chunk_size=chunk_size,
            window=window,
            resend_buffer_steps=(
                self.resend_buffer_steps if resend_buffer_steps is None else resend_buffer_steps
            ),
        )
        return Session(self, core)

    def predict(
        self,
        x: ArrayLike,
        model: str = "",
        version: str = "",
        return_sequences: bool = True,
    ) -> np.ndarray:
        """Whole sequences from the initial state, no session kept.

        ``X [n, T, F]`` -> ``[n, T, O]`` (``[n, O]`` without ``return_sequences``);
        ``X [T, F]`` -> ``[T, O]`` (``[O]``).

        Example::

            Y = client.predict(np.zeros((24, 1)), model="seattle-temp")   # [24, 1]
        """
        arr, batched = _codec.check_sequences(x, self._n_features(model, version))
        request = _codec.predict_request(arr, model, version, return_sequences)
        response: pb.PredictResponse = self._call(self._stub.Predict, request)
        y = _codec.predict_result(response)
        return y if batched else y[0]

    def get_session(self, session_id: str) -> SessionInfo:
        """Where a session stands; NotFoundError once it ended or expired."""
        request = pb.GetSessionRequest(session_id=session_id)
        response: pb.SessionInfo = self._call(
            self._stub.GetSession, request, metadata=routing_metadata(session_id)
        )
        return SessionInfo.from_proto(response)

    def delete_session(self, session_id: str) -> bool:
        """End a session now (its live stream is told why); NotFoundError if there is none."""
        request = pb.DeleteSessionRequest(session_id=session_id)
        response: pb.DeleteSessionResponse = self._call(
            self._stub.DeleteSession, request, retry=False, metadata=routing_metadata(session_id)
        )
        return response.deleted

    def health(self, service: str = "") -> str:
        """The standard ``grpc.health.v1`` status: ``"SERVING"``, ``"NOT_SERVING"``, ...."""
        check = health_check_call(self._channel)
        return health_status(self._call(check, health_request(service)))

    def close(self) -> None:
        """Close the channel (sessions' streams end; their sessions stay resumable)."""
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
