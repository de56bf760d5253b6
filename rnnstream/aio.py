"""The asyncio client: ``AsyncClient`` and ``AsyncSession``, the same API as ``rnnstream.client``.

Example::

    import asyncio
    import rnnstream

    async def main() -> None:
        async with rnnstream.AsyncClient("localhost:50051") as client:
            async with client.session(model="seattle-temp") as session:
                y = await session.step([51.2])       # [n_outputs]

    asyncio.run(main())
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Generator, Sequence
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
# The end-of-stream marker of grpc.aio's read() (grpc-stubs does not declare it).
_GRPC_EOF: object = grpc.aio.EOF  # type: ignore[attr-defined]


def _cancelling() -> bool:
    """Whether the current task is being cancelled (Python 3.11+; False before)."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return bool(cancelling()) if cancelling is not None else False


class _AsyncStream:
    """One attempt at the Stream RPC; a reader task queues answers so reads can time out."""

    def __init__(self, stub: pb_grpc.PredictorStub, metadata: Metadata) -> None:
        # aio: no request iterator
        self.call: Any = stub.Stream(metadata=metadata)  # type: ignore[call-arg]
        self._responses: asyncio.Queue[object] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read(), name="rnnstream-reader")

    async def _read(self) -> None:
        try:
            while True:
                response = await self.call.read()
                if response is _GRPC_EOF:
                    self._responses.put_nowait(END_OF_STREAM)
                    return
                self._responses.put_nowait(response)
        except grpc.RpcError as err:
            self._responses.put_nowait(from_rpc_error(err))
        except asyncio.CancelledError:
            self._responses.put_nowait(
                RnnstreamError("the stream was cancelled", grpc.StatusCode.CANCELLED)
            )
            raise
        except Exception as err:  # never let the task die silently
            self._responses.put_nowait(
                RnnstreamError(f"the stream failed: {err!r}", grpc.StatusCode.UNKNOWN)
            )

    async def send(self, request: pb.StreamRequest | None, timeout: float | None) -> None:
        """Write a message (None half-closes); a dead stream's reason comes from ``recv``.

        A write the server does not take within ``timeout`` (flow control: it stopped
        reading) raises UnavailableError, like a read that times out.
        """
        try:
            if request is HALF_CLOSE:
                await asyncio.wait_for(self.call.done_writing(), timeout)
            else:
                await asyncio.wait_for(self.call.write(request), timeout)
        except TimeoutError:
            raise UnavailableError(
                f"the server took no message within {timeout:g}s",
                grpc.StatusCode.DEADLINE_EXCEEDED,
            ) from None
        except (grpc.RpcError, asyncio.InvalidStateError):
            pass  # the stream ended; the reader reports why
        except asyncio.CancelledError:
            if _cancelling() or not self.call.cancelled():
                raise

    async def recv(self, timeout: float | None) -> pb.StreamResponse | None:
        """The next response, None at the end of the stream; raises the stream's error."""
        try:
            item = await asyncio.wait_for(self._responses.get(), timeout)
        except TimeoutError:
            raise UnavailableError(
                f"no answer from the server within {timeout:g}s",
                grpc.StatusCode.DEADLINE_EXCEEDED,
            ) from None
        return unwrap(item)

    def poll(self) -> object:
        """A response that already arrived, ``END_OF_STREAM`` at the end, or None if none yet."""
        try:
            item = self._responses.get_nowait()
        except asyncio.QueueEmpty:
            return None
        return END_OF_STREAM if item is END_OF_STREAM else unwrap(item)

    async def cancel(self) -> None:
        """Drop the stream (the server keeps the session) and end the reader task."""
        self.call.cancel()
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)


class AsyncSession(SessionView):
    """One stateful session over a stream, for asyncio; see :class:`rnnstream.Session`.

    Open it with ``async with client.session(...) as s`` or ``s = await client.session(...)``.

    Example::

        async with client.session(model="tiny-m2o") as s:
            await s.steps(X)         # [T, F]
            y = await s.end()        # [O]
    """

    def __init__(self, client: AsyncClient, core: SessionCore) -> None:
        self._client = client
        self._core = core
        self._stream: _AsyncStream | None = None
        self._closed = False
        self.reconnects = 0
        self.states: np.ndarray | None = None

    # -- public ---------------------------------------------------------------------------

    async def open(self) -> AsyncSession:
        """Open (or resume) the session on the server; done by ``async with`` and ``await``."""
        if not self._core.opened:
            await self._run(lambda: self._core.opened)
        return self

    def __await__(self) -> Generator[Any, None, AsyncSession]:
        return self.open().__await__()

    async def step(self, x: ArrayLike) -> np.ndarray:
        """Send one time step ``x [F]``; returns ``y [O]`` (many-to-one: an empty ``[0]``)."""
        await self.open()
        y = await self.steps(_codec.check_step(x, self.model.n_features))
        return y[0] if len(y) else np.empty(0, dtype=np.float32)

    async def steps(self, x: ArrayLike) -> np.ndarray:
        """Send ``X [T, F]`` in chunks; returns ``Y [T, O]`` (many-to-one: ``[0, O]``)."""
        await self.open()
        arr = _codec.check_steps(x, self.model.n_features)
        core = self._core
        await self._begin()
        core.enqueue(arr)
        await self._run(core.drained)
        y, self.states = core.take_outputs(len(arr))
        return y

    async def end(self, reset: bool = True) -> np.ndarray:
        """End the current sequence; returns its last ``y [O]`` (empty if it had no steps)."""
        await self.open()
        core = self._core
        await self._begin()
        core.end_request = pb.End(reset=reset)
        await self._run(lambda: core.final is not None)
        return core.final_y()

    async def close(self) -> None:
        """Half-close the stream after unacknowledged steps are applied; resumable by id."""
        if self._closed:
            return
        core = self._core
        core.close()
        if self._stream is not None or core.pending:
            await self._run(lambda: False)
        self._closed = True
        await self._discard_stream()

    async def delete(self) -> None:
        """End the session on the server now and free its state; it cannot be resumed."""
        await self._discard_stream()
        self._closed = True
        self._core.close()
        await self._client.delete_session(self.id)

    async def __aenter__(self) -> AsyncSession:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            await self.close()
        else:
            self._closed = True
            self._core.close()
            await self._discard_stream()

    def __repr__(self) -> str:
        model = self._core.info.key if self._core.info else self._core.requested_model
        return f"AsyncSession(id={self.id!r}, model={model!r}, next_step={self.next_step})"

    # -- the stream -----------------------------------------------------------------------

    async def _begin(self) -> None:
        if self._closed:
            raise RuntimeError(f"session {self.id} is closed: open it again by id to continue")
        self._core.begin_call()
        if self._core.phase is Phase.RESYNC:  # after an error: learn where it stands first
            await self._run(lambda: self._core.phase is not Phase.RESYNC)

    async def _connect(self) -> None:
        core = self._core
        resuming = core.opened
        self._stream = stream = _AsyncStream(
            self._client._stub, self._client._metadata(routing_metadata(core.id))
        )
        await stream.send(core.open_request(), self._client.timeout)
        if core.on_open_answer(await stream.recv(self._client.timeout)):
            info = await self._client.get_session(core.id)
            core.resolve_end(info.sequence_steps)
        if resuming:
            self.reconnects += 1

    async def _run(self, done: Callable[[], bool]) -> None:
        """Write what is due and read answers until ``done()``, reconnecting as needed."""
        core = self._core
        failures = 0
        while True:
            try:
                if self._stream is None:
                    await self._connect()
                stream = self._stream
                assert stream is not None
                for request in core.sendable():
                    await stream.send(request, self._client.timeout)
                if done():
                    core.take_ready(stream.poll)
                    if done():
                        return
                response = await stream.recv(self._client.timeout)
                if response is None:
                    if core.phase is Phase.HALF_CLOSED:
                        return
                    raise ended_unexpectedly()
                core.on_response(response)
                failures = 0
            except RnnstreamError as exc:
                await self._discard_stream()
                if core.on_stream_error(exc, failures, self._client.max_retries):
                    return
                failures += 1
                await asyncio.sleep(backoff_delay(self._client.backoff, failures))

    async def _discard_stream(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            await stream.cancel()


class AsyncClient(ClientBase):
    """A ``grpc.aio`` connection to an rnnstream server; ``async with`` closes its channel.

    Create it inside a running event loop. Same arguments as :class:`rnnstream.Client`.

    Example::

        async with rnnstream.AsyncClient("localhost:50051") as client:
            models = await client.models()
            Y = await client.predict(np.zeros((24, 1)), model="seattle-temp")
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
            grpc.aio.secure_channel(address, credentials, options=opts)
            if credentials is not None
            else grpc.aio.insecure_channel(address, options=opts)
        )
        self._stub = pb_grpc.PredictorStub(self._channel)

    async def _call(
        self,
        method: Callable[..., Awaitable[T]],
        request: object,
        retry: bool = True,
        metadata: Metadata | None = None,
    ) -> T:
        failures = 0
        while True:
            try:
                return await method(
                    request, timeout=self.timeout, metadata=self._metadata(metadata)
                )
            except grpc.RpcError as err:
                delay = self._retry_delay(err, failures, retry)
                failures += 1
                await asyncio.sleep(delay)

    async def models(self) -> list[ModelInfo]:
        """Every model version the server serves."""
        response: pb.ListModelsResponse = await self._call(
            self._stub.ListModels, pb.ListModelsRequest()
        )
        return self._remember_models(response)

    async def default_model(self) -> str:
        """The model an empty ``model`` selects (from the last ``models()`` if any)."""
        if not self._models:
            await self.models()
        return self._default_model

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
    ) -> AsyncSession:
        """A session to open with ``async with`` or ``await``; see :meth:`Client.session`."""
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
        return AsyncSession(self, core)

    async def predict(
        self,
        x: ArrayLike,
        model: str = "",
        version: str = "",
        return_sequences: bool = True,
    ) -> np.ndarray:
        """Whole sequences from the initial state; see :meth:`Client.predict`."""
        if not self._models:
            await self.models()
        n_features = self._cached_n_features(model, version)
        arr, batched = _codec.check_sequences(x, n_features)
        request = _codec.predict_request(arr, model, version, return_sequences)
        response: pb.PredictResponse = await self._call(self._stub.Predict, request)
        y = _codec.predict_result(response)
        return y if batched else y[0]

    async def get_session(self, session_id: str) -> SessionInfo:
        """Where a session stands; NotFoundError once it ended or expired."""
        request = pb.GetSessionRequest(session_id=session_id)
        response: pb.SessionInfo = await self._call(
            self._stub.GetSession, request, metadata=routing_metadata(session_id)
        )
        return SessionInfo.from_proto(response)

    async def delete_session(self, session_id: str) -> bool:
        """End a session now; NotFoundError if there is none."""
        request = pb.DeleteSessionRequest(session_id=session_id)
        response: pb.DeleteSessionResponse = await self._call(
            self._stub.DeleteSession, request, retry=False, metadata=routing_metadata(session_id)
        )
        return response.deleted

    async def health(self, service: str = "") -> str:
        """The standard ``grpc.health.v1`` status: ``"SERVING"``, ``"NOT_SERVING"``, ...."""
        check = health_check_call(self._channel)
        return health_status(await self._call(check, health_request(service)))

    async def close(self) -> None:
        """Close the channel (sessions' streams end; their sessions stay resumable)."""
        await self._channel.close(None)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
