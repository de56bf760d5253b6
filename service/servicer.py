"""The gRPC servicer: decode protobuf, call the core, encode; domain errors become statuses.

Nothing here decides anything: sessions, the engine and the repository do. ``ServiceError``
subclasses carry their status code; ``_unary`` and ``Stream`` map them to ``abort`` in one
way each. A refused message changes no state, and the session survives a refused stream.
Every handler that names a session passes the caller's principal (``_principal``) to the
session manager, which answers another principal's session as a missing one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from rnnstream.server import codec
from rnnstream.server.auth import Authenticator
from rnnstream.server.end_reasons import EndReason
from rnnstream.server.errors import (
    InvalidArgument,
    NotFound,
    ServiceError,
    Unauthenticated,
    Unavailable,
)
from rnnstream.server.metrics import Metrics
from rnnstream.server.predict import predict
from rnnstream.server.repository import ModelRepository
from rnnstream.server.session_ids import check_session_id
from rnnstream.server.sessions import Session, SessionManager
from rnnstream.server.settings import Settings
from rnnstream.server.stream_handle import StreamHandle
from rnnstream.v1 import rnnstream_pb2 as pb
from rnnstream.v1 import rnnstream_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

# What ServicerContext.read() returns once the client half-closed its requests (grpc-stubs
# does not declare it).
GRPC_EOF: object = grpc.aio.EOF  # type: ignore[attr-defined]

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any, Req, grpc.aio.ServicerContext[Req, Resp]], Awaitable[Resp]]


def _unary(handler: Handler[Req, Resp]) -> Handler[Req, Resp]:
    """Map a unary handler's ServiceError to its status code and message."""

    @functools.wraps(handler)
    async def wrapper(
        self: Any, request: Req, context: grpc.aio.ServicerContext[Req, Resp]
    ) -> Resp:
        try:
            return await handler(self, request, context)
        except ServiceError as exc:
            self.metrics.error(exc.code)
            await context.abort(exc.code, exc.message)
            raise  # abort raises; this line is never reached

    return wrapper


class _EndedWhileWriting(Exception):
    """The stream's session ended or moved while a reply was being written."""


async def _write(
    context: grpc.aio.ServicerContext[pb.StreamRequest, pb.StreamResponse],
    handle: StreamHandle,
    response: pb.StreamResponse | bytes,
) -> None:
    """Write a Stream reply (a message, or ``codec.outputs_bytes``) without being cancelled.

    ``StreamHandle.end`` does not cancel a stream that is writing; the end is noticed here,
    once the write is done, and the stream stops as if it had been cancelled then.
    """
    handle.writing = True
    try:
        await context.write(response)  # type: ignore[arg-type]  # bytes: see codec
    finally:
        handle.writing = False
    if handle.reason is not None:
        handle.write_done()
        raise _EndedWhileWriting


def caller(
    authenticator: Authenticator, metrics: Metrics, context: grpc.aio.ServicerContext[Any, Any]
) -> str:
    """The calling principal ("" when unauthenticated); Unauthenticated, counted, if refused."""
    if not authenticator.enabled:
        return ""  # nothing to check: the call's metadata is not even read
    try:
        return authenticator.principal(context.invocation_metadata(), context.auth_context())
    except Unauthenticated as exc:
        metrics.auth_failure(exc.reason)
        raise


class PredictorServicer(pb_grpc.PredictorServicer):
    """rnnstream.v1.Predictor over a model repository and a session manager.

    Register it with ``server.add_predictor``: Stream reads ``codec.StepsFrame`` and writes
    pre-encoded bytes, which the generated registration's codecs do not know.
    """

    def __init__(
        self,
        repository: ModelRepository,
        sessions: SessionManager,
        settings: Settings,
        metrics: Metrics,
        authenticator: Authenticator | None = None,
    ) -> None:
        """``authenticator`` None: every caller is let in, as principal ""."""
        self.repository = repository
        self.sessions = sessions
        self.settings = settings
        self.metrics = metrics
        self.authenticator = authenticator or Authenticator()
        self._model_infos = {
            model.key: codec.model_info(model.manifest, model.graph)
            for model in repository.models()
        }

    def _principal(self, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        """Who is calling ("" when unauthenticated); Unauthenticated, counted, if refused."""
        return caller(self.authenticator, self.metrics, context)

    @_unary
    async def ListModels(  # noqa: N802 (gRPC method name)
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListModelsResponse:
        """Every served model version."""
        principal = self._principal(context)
        del principal  # models are everyone's
        return pb.ListModelsResponse(
            models=list(self._model_infos.values()), default_model=self.repository.default_name
        )

    @_unary
    async def Predict(  # noqa: N802
        self, request: pb.PredictRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.PredictResponse:
        """Whole sequences from the initial state; no session."""
        principal = self._principal(context)
        del principal  # no session to own
        if self.sessions.draining:
            raise Unavailable("the server is draining: send Predict to another server")
        model = self.repository.get(request.model, request.version)
        x = codec.decode_sequences(request, model.manifest, self.settings.max_steps_per_message)
        y = await predict(model, x, request.return_sequences)
        return pb.PredictResponse(y=codec.flat(y), shape=list(y.shape), model=self._info(model.key))

    @_unary
    async def GetSession(  # noqa: N802
        self, request: pb.GetSessionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.SessionInfo:
        """Where a session stands."""
        session = self.sessions.get(request.session_id, self._principal(context))
        now = self.sessions.clock()
        return pb.SessionInfo(
            session_id=session.id,
            next_step=session.next_step,
            model=session.model.manifest.name,
            version=session.model.manifest.version,
            age_s=now - session.created,
            idle_s=now - session.last_active,
            live=session.live,
            sequence_steps=session.sequence_steps,
            idle_ttl_s=session.idle_ttl_s,
            restored_step=session.restored_step,
        )

    @_unary
    async def DeleteSession(  # noqa: N802
        self, request: pb.DeleteSessionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.DeleteSessionResponse:
        """End a session now; its live stream, if any, is told why.

        With a session store a session held by another process is moved here first, so it
        ends wherever it was (and its store entry goes).
        """
        principal = self._principal(context)
        mover = self.sessions.mover
        if mover is not None and self.sessions.find(request.session_id) is None:
            check_session_id(request.session_id, "session_id")
            await mover.bring(request.session_id, False, "", "", None, None, 0.0, principal)
        if not self.sessions.delete(request.session_id, principal):
            self.sessions.get(request.session_id, principal)  # raises NotFound with the message
        return pb.DeleteSessionResponse(deleted=True)

    async def Stream(  # type: ignore[override]  # noqa: N802 (read/write style, not a generator)
        self,
        request_iterator: AsyncIterator[pb.StreamRequest],
        context: grpc.aio.ServicerContext[pb.StreamRequest, pb.StreamResponse],
    ) -> None:
        """One stateful session per stream: Open, then Steps and End, in order."""
        handle = StreamHandle(asyncio.current_task(), self.settings.write_grace_s)
        session: Session | None = None
        try:
            principal = self._principal(context)
            open_ = await self._read_open(context)
            if open_ is None:
                return
            session = await self.sessions.open(
                open_.model,
                open_.version,
                open_.session_id,
                open_.return_sequences if open_.HasField("return_sequences") else None,
                open_.return_state if open_.HasField("return_state") else None,
                open_.idle_ttl_s,
                create=open_.create,
                principal=principal,
            )
            # From here on the finally clause detaches, however the stream ends.
            self.sessions.attach(session, handle)
            await self.sessions.settle(session)
            await _write(context, handle, pb.StreamResponse(opened=self._opened(session)))
            await self._serve(session, handle, context)
        except (asyncio.CancelledError, _EndedWhileWriting):
            if handle.reason is None or session is None:
                raise  # the client went away, or grpc is stopping: nothing to say
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                task.uncancel()
            if handle.cut_off:
                # A reply could not be delivered (the client stopped reading): no
                # SessionEnded can follow it, but a status can, queued behind it.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(
                        context.abort(grpc.StatusCode.UNAVAILABLE, handle.message),
                        handle.write_grace_s,
                    )
                return
            ended = pb.SessionEnded(
                session_id=session.id,
                reason=codec.end_reason(handle.reason),
                message=handle.message,
            )
            # The client may be gone already, or not reading: a bounded, best-effort write.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    context.write(pb.StreamResponse(ended=ended)), handle.write_grace_s
                )
        except ServiceError as exc:
            self.metrics.error(exc.code)
            await context.abort(exc.code, exc.message)
        except Exception:
            if context.cancelled():
                return  # a write failed because the client cancelled: nobody to tell
            raise
        finally:
            handle.write_done()  # no cut-off timer outlives the stream
            if session is not None:
                self.sessions.detach(session, handle)

    async def _read_open(
        self, context: grpc.aio.ServicerContext[pb.StreamRequest, pb.StreamResponse]
    ) -> pb.Open | None:
        """The stream's first message, which must be Open (None: the client left at once)."""
        request = await context.read()
        if request is GRPC_EOF:
            return None
        kind = "steps" if isinstance(request, codec.StepsFrame) else request.WhichOneof("kind")
        if kind != "open":
            raise InvalidArgument(
                f"the first message of a stream must be Open, got "
                f"{kind or 'an empty StreamRequest'}: send "
                "StreamRequest{open: {model: ...}} first"
            )
        assert isinstance(request, pb.StreamRequest)
        return request.open

    def _opened(self, session: Session) -> pb.Opened:
        """The answer to Open: where the session stands."""
        return pb.Opened(
            session_id=session.id,
            model=self._info(session.model.key),
            next_step=session.next_step,
            return_sequences=session.return_sequences,
            return_state=session.return_state,
            idle_ttl_s=session.idle_ttl_s,
            restored_step=session.restored_step,
            durable_step=self._durable(session),
        )

    @staticmethod
    def _durable(session: Session) -> int | None:
        """``durable_step`` for Opened and Final (always sent with a store; now told)."""
        session.durable_told = session.durable_step
        return session.durable_step

    async def _serve(
        self,
        session: Session,
        handle: StreamHandle,
        context: grpc.aio.ServicerContext[pb.StreamRequest, pb.StreamResponse],
    ) -> None:
        """Steps and End until the client half-closes or ends the session."""
        manifest = session.model.manifest
        max_steps = self.settings.max_steps_per_message
        while True:
            request = await context.read()
            if request is GRPC_EOF:
                if session.sequence_steps and session.ended is None:
                    await _write(context, handle, await self._final(session, reset=False))
                return
            if isinstance(request, codec.StepsFrame):  # the common case (codec.read_stream_request)
                start, values = request.start, request.x
                kind = "steps"
            else:
                assert isinstance(request, pb.StreamRequest)
                kind = request.WhichOneof("kind")
                start, values = request.steps.start, request.steps.x
            if kind == "steps":
                began = time.perf_counter()
                x = codec.decode_steps(values, manifest, max_steps, "Steps.x")
                out = await self.sessions.steps(session, start, x)
                if session.return_sequences:
                    states = out.states if session.return_state else None
                    # Written as bytes: codec.write_stream_response passes them through.
                    durable = session.durable_news()
                    await _write(
                        context, handle, codec.outputs_bytes(out.start, out.y, states, durable)
                    )
                self.metrics.step_latency.observe(time.perf_counter() - began)
            elif kind == "end":
                await _write(context, handle, await self._final(session, reset=request.end.reset))
                if request.end.close:
                    self.sessions.close(session, EndReason.CLIENT_END)
                    return
            elif kind == "open":
                raise InvalidArgument(
                    f"this stream already opened session {session.id}: send Open only once, "
                    "as the first message; to switch sessions, open a new stream"
                )
            else:
                raise InvalidArgument("empty StreamRequest: set one of open, steps or end")

    async def _final(self, session: Session, reset: bool) -> pb.StreamResponse:
        """End the session's current sequence and encode the Final answer."""
        final = await self.sessions.end(session, reset=reset)
        return pb.StreamResponse(
            final=pb.Final(
                steps=final.steps,
                y=codec.flat(final.y),
                state=codec.flat(final.state),
                next_step=final.next_step,
                durable_step=self._durable(session),
            )
        )

    def _info(self, key: str) -> pb.ModelInfo:
        """The cached ModelInfo of ``name/version``."""
        info = self._model_infos.get(key)
        if info is None:
            raise NotFound(f"model {key} is not served here")
        return info
