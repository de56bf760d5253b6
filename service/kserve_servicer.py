"""KServe v2 / Triton gRPC (``inference.GRPCInferenceService``) over rnnstream's core.

Protobuf in, domain calls on the repository, ``predict`` and the ``SessionManager``,
protobuf out (``kserve_mapping`` does the conversions). Unary methods map a domain error
to its status code; ``ModelStreamInfer`` answers a refused request with ``error_message``
and keeps the stream, as Triton does. A refused request changes no state: everything is
checked before a session is opened or a step runs.

Sequences are sessions (``kserve_mapping.session_id_for``): ``sequence_start`` creates the
session, or resumes it when it exists (a client that reconnects after a dropped stream
continues from the state it left); each request runs its steps in order; ``sequence_end``
answers, then ends the session. No stream owns a session, so a sequence outlives any
stream within its idle TTL, on any worker (with a session store).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from typing import Any

import grpc
from google.protobuf import message_factory

import rnnstream
from rnnstream.kserve import grpc_service_pb2 as kpb
from rnnstream.kserve import model_config_pb2 as mpb
from rnnstream.server import kserve_mapping as mapping
from rnnstream.server.auth import Authenticator
from rnnstream.server.end_reasons import EndReason
from rnnstream.server.errors import InvalidArgument, NotFound, ServiceError, Unavailable
from rnnstream.server.metrics import Metrics
from rnnstream.server.predict import predict
from rnnstream.server.repository import LoadedModel, ModelRepository
from rnnstream.server.servicer import GRPC_EOF, _unary, caller
from rnnstream.server.sessions import Session, SessionManager
from rnnstream.server.settings import Settings

SERVICE = kpb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
SERVICE_NAME = SERVICE.full_name
EXTENSIONS = ["model_configuration", "sequence", "parameters"]

Context = grpc.aio.ServicerContext[Any, Any]


class KServeServicer:
    """The KServe v2 methods rnnstream serves; register with ``add_kserve``."""

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

    async def ServerLive(  # noqa: N802 (gRPC method name)
        self, request: kpb.ServerLiveRequest, context: Context
    ) -> kpb.ServerLiveResponse:
        """Live while the process serves."""
        return kpb.ServerLiveResponse(live=True)

    async def ServerReady(  # noqa: N802
        self, request: kpb.ServerReadyRequest, context: Context
    ) -> kpb.ServerReadyResponse:
        """Ready until the server drains."""
        return kpb.ServerReadyResponse(ready=not self.sessions.draining)

    @_unary
    async def ModelReady(  # noqa: N802
        self, request: kpb.ModelReadyRequest, context: Context
    ) -> kpb.ModelReadyResponse:
        """Whether the model (version) is served here and the server is not draining."""
        caller(self.authenticator, self.metrics, context)
        try:
            self.repository.get(request.name, request.version)
        except NotFound:
            return kpb.ModelReadyResponse(ready=False)
        return kpb.ModelReadyResponse(ready=not self.sessions.draining)

    @_unary
    async def ServerMetadata(  # noqa: N802
        self, request: kpb.ServerMetadataRequest, context: Context
    ) -> kpb.ServerMetadataResponse:
        """Name, version and the protocol extensions served."""
        caller(self.authenticator, self.metrics, context)
        return kpb.ServerMetadataResponse(
            name="rnnstream", version=rnnstream.__version__, extensions=EXTENSIONS
        )

    @_unary
    async def ModelMetadata(  # noqa: N802
        self, request: kpb.ModelMetadataRequest, context: Context
    ) -> kpb.ModelMetadataResponse:
        """The model's versions and tensors."""
        caller(self.authenticator, self.metrics, context)
        manifest = self.repository.get(request.name, request.version).manifest
        versions = [
            m.manifest.version for m in self.repository.models() if m.manifest.name == manifest.name
        ]
        return mapping.model_metadata(manifest, versions)

    @_unary
    async def ModelConfig(  # noqa: N802
        self, request: kpb.ModelConfigRequest, context: Context
    ) -> kpb.ModelConfigResponse:
        """The model's configuration, as far as clients read it."""
        caller(self.authenticator, self.metrics, context)
        model = self.repository.get(request.name, request.version)
        config: mpb.ModelConfig = mapping.model_config(model.manifest, self.settings.idle_ttl_s)
        return kpb.ModelConfigResponse(config=config)

    @_unary
    async def ModelInfer(  # noqa: N802
        self, request: kpb.ModelInferRequest, context: Context
    ) -> kpb.ModelInferResponse:
        """One request: whole sequences like Predict, or a sequence's next steps."""
        return await self._infer(request, caller(self.authenticator, self.metrics, context))

    async def ModelStreamInfer(  # noqa: N802
        self, request_iterator: Any, context: Context
    ) -> None:
        """Requests in, one response each; a sequence's requests run in the order sent.

        Requests of different sequences run concurrently (and batch together), so their
        responses may come back in another order; each carries its request's ``id``.
        """
        try:
            principal = caller(self.authenticator, self.metrics, context)
        except ServiceError as exc:
            self.metrics.error(exc.code)
            await context.abort(exc.code, exc.message)
        writing = asyncio.Lock()
        last_of: dict[tuple[str, mapping.SequenceId], asyncio.Task[None]] = {}
        running: set[asyncio.Task[None]] = set()
        try:
            while True:
                request = await context.read()
                if request is GRPC_EOF:
                    break
                key = _ordering_key(request)
                before = last_of.get(key) if key is not None else None
                task = asyncio.create_task(
                    self._answer(request, principal, before, context, writing)
                )
                running.add(task)
                task.add_done_callback(running.discard)
                if key is not None:
                    last_of[key] = task
                    task.add_done_callback(functools.partial(_forget_last, last_of, key))
            while running:
                await asyncio.gather(*running)
        finally:
            for task in running:
                task.cancel()

    async def _answer(
        self,
        request: kpb.ModelInferRequest,
        principal: str,
        before: asyncio.Task[None] | None,
        context: Context,
        writing: asyncio.Lock,
    ) -> None:
        """Answer one stream request once the one before it in its sequence is answered."""
        if before is not None:
            await asyncio.wait([before])
        try:
            response = kpb.ModelStreamInferResponse(
                infer_response=await self._infer(request, principal)
            )
        except ServiceError as exc:
            self.metrics.error(exc.code)
            response = kpb.ModelStreamInferResponse(
                error_message=exc.message,
                infer_response=kpb.ModelInferResponse(
                    model_name=request.model_name,
                    model_version=request.model_version,
                    id=request.id,
                ),
            )
        async with writing:
            with contextlib.suppress(asyncio.InvalidStateError):  # the call already ended
                await context.write(response)

    async def _infer(
        self, request: kpb.ModelInferRequest, principal: str
    ) -> kpb.ModelInferResponse:
        """Check everything, then run: a refused request changes no state."""
        control = mapping.sequence_control(request)
        model = self.repository.get(request.model_name, request.model_version)
        manifest = model.manifest
        inputs = mapping.decode_input(request, manifest, self.settings.max_steps_per_message)
        if control is None:
            if self.sessions.draining:
                raise Unavailable("the server is draining: send the request to another server")
            y = await predict(model, inputs.x, manifest.return_sequences)
            return mapping.infer_response(request, manifest, y, inputs.batched)
        if len(inputs.x) != 1:
            raise InvalidArgument(
                f"inference input {mapping.INPUT!r} holds {len(inputs.x)} sequences, but a "
                f"request of sequence {control.sequence_id!r} carries one: shape [T, "
                f"{manifest.n_features}] or [1, T, {manifest.n_features}]"
            )
        session = await self._session(model, request.model_version, control, principal)
        # This protocol has no step indices: each request's steps come next. Requests of
        # one sequence sent at once (from several connections) run one after the other.
        await self.sessions.settle(session)
        out = await self.sessions.steps(session, session.next_step, inputs.x[0])
        y = out.y if manifest.return_sequences else out.y[-1]
        if control.end:
            await self.sessions.end(session, reset=True)
            self.sessions.close(session, EndReason.CLIENT_END)
        return mapping.infer_response(request, manifest, y[None], inputs.batched)

    async def _session(
        self, model: LoadedModel, version: str, control: mapping.SequenceControl, principal: str
    ) -> Session:
        """The sequence's session: created or resumed at its start, else looked up."""
        manifest = model.manifest
        session_id = mapping.session_id_for(manifest.name, control.sequence_id)
        try:
            return await self.sessions.open(
                manifest.name,
                version,
                session_id,
                None,
                None,
                create=control.start,
                principal=principal,
            )
        except NotFound as exc:
            if control.start:
                raise
            raise InvalidArgument(
                f"inference request for sequence {control.sequence_id!r} to model "
                f"{manifest.name!r} must specify the START flag on the first request of the "
                f"sequence (no such sequence: it ended, expired after "
                f"{self.settings.idle_ttl_s:g}s idle, or never started)"
            ) from exc


def _ordering_key(request: kpb.ModelInferRequest) -> tuple[str, mapping.SequenceId] | None:
    """What a stream orders requests by: the model and the sequence id (None: no sequence).

    A request whose parameters are refused has none: it is answered with its refusal.
    """
    try:
        control = mapping.sequence_control(request)
    except ServiceError:
        return None
    return None if control is None else (request.model_name, control.sequence_id)


def _forget_last(
    last_of: dict[tuple[str, mapping.SequenceId], asyncio.Task[None]],
    key: tuple[str, mapping.SequenceId],
    done: asyncio.Task[None],
) -> None:
    """Drop a sequence's last task once done, unless a later request took its place."""
    if last_of.get(key) is done:
        del last_of[key]


def add_kserve(servicer: KServeServicer, server: grpc.aio.Server) -> None:
    """Register the methods ``servicer`` implements; the others answer UNIMPLEMENTED."""
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in SERVICE.methods:
        handler = getattr(servicer, method.name, None)
        if handler is None:
            continue
        factory = (
            grpc.stream_stream_rpc_method_handler
            if method.client_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        handlers[method.name] = factory(
            handler,
            request_deserializer=message_factory.GetMessageClass(method.input_type).FromString,
            response_serializer=message_factory.GetMessageClass(
                method.output_type
            ).SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)  # type: ignore[attr-defined]
