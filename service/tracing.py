"""OpenTelemetry tracing of the server (``--otel``): a span per RPC and per session step batch.

``setup(enabled)`` gives the server its ``Tracing``. Off (the default) that is ``OFF``, whose
helpers do nothing: no interceptor is installed, ``step_batch`` hands back one shared null
context, and OpenTelemetry is never imported (it need not be installed). On, it is an
``OtelTracing`` with a tracer provider of its own (each worker process of ``--workers N``
sets up one; its resource's ``service.instance.id`` and ``process.pid`` tell them apart),
exporting as the standard variables say:

- ``OTEL_TRACES_EXPORTER``: ``otlp`` (the default: OTLP over gRPC), ``console``, ``none``,
  or several, comma separated;
- ``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` and the other
  ``OTEL_EXPORTER_OTLP_*`` variables, read by the OTLP exporter;
- ``OTEL_SERVICE_NAME`` (default ``rnnstream``) and ``OTEL_RESOURCE_ATTRIBUTES``, which win
  over the resource attributes set here;
- ``OTEL_PROPAGATORS`` (default W3C ``tracecontext,baggage``): how a client's trace context
  is read from the call's metadata (``traceparent``, ``tracestate``).

Spans:

- one per RPC of the services named to ``interceptors`` (a server interceptor), a SERVER
  span named after the gRPC method (``rnnstream.v1.Predictor/Stream``) with ``rpc.system``,
  ``rpc.service``, ``rpc.method`` and, at its end, ``rpc.grpc.status_code``; status ERROR
  when that is not OK. A client's trace continues in it;
- one per batch of a session's steps that runs (``step_batch``, a child of its call's
  span): ``rnnstream.model``, ``rnnstream.model_version``, ``rnnstream.session_id``,
  ``rnnstream.step.first``, ``rnnstream.step.last`` and ``rnnstream.steps``.

``shutdown`` flushes what is not exported yet; the server calls it last when it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span

INSTALL_HINT = "pip install 'rnnstream[otel]'"
#: ``OTEL_TRACES_EXPORTER`` values served, and the default.
EXPORTERS = ("otlp", "console", "none")
DEFAULT_EXPORTER = "otlp"
DEFAULT_SERVICE_NAME = "rnnstream"
STEP_BATCH_SPAN = "rnnstream.steps"
TRACER_NAME = "rnnstream.server"
SDK_MODULE = "opentelemetry.sdk.trace"
OTLP_MODULE = "opentelemetry.exporter.otlp.proto.grpc.trace_exporter"

_NOTHING: AbstractContextManager[None] = contextlib.nullcontext()
# How a call ends with a status of its own choosing, or is cancelled: no exception to record.
_EXPECTED_ENDS = (asyncio.CancelledError, grpc.aio.AbortError)


class TracingError(Exception):
    """``--otel`` cannot work here: the packages are missing or an exporter is unknown."""


class Tracing:
    """No tracing (``--otel`` off): every helper does nothing, at next to no cost."""

    enabled = False

    def interceptors(self, services: Collection[str]) -> list[grpc.aio.ServerInterceptor[Any, Any]]:
        """The server interceptors that trace the RPCs of ``services`` (none)."""
        return []

    def step_batch(
        self, model: str, version: str, session_id: str, first: int, count: int
    ) -> AbstractContextManager[object]:
        """A span around one run of a session's steps ``first..first+count-1`` (none)."""
        return _NOTHING

    def shutdown(self) -> None:
        """Export what is left and stop (nothing to do)."""


#: The tracing of a server without ``--otel``.
OFF = Tracing()


class OtelTracing(Tracing):
    """Tracing with OpenTelemetry over a tracer provider of this server's own."""

    enabled = True

    def __init__(self, provider: TracerProvider) -> None:
        import rnnstream

        self.provider = provider
        self.tracer = provider.get_tracer(TRACER_NAME, rnnstream.__version__)

    def interceptors(self, services: Collection[str]) -> list[grpc.aio.ServerInterceptor[Any, Any]]:
        """One interceptor that gives each RPC of ``services`` its span."""
        return [_RpcSpans(self, frozenset(services))]

    def step_batch(
        self, model: str, version: str, session_id: str, first: int, count: int
    ) -> AbstractContextManager[object]:
        """A span around one run of a session's steps ``first..first+count-1``."""
        return self.tracer.start_as_current_span(
            STEP_BATCH_SPAN,
            attributes={
                "rnnstream.model": model,
                "rnnstream.model_version": version,
                "rnnstream.session_id": session_id,
                "rnnstream.step.first": first,
                "rnnstream.step.last": first + count - 1,
                "rnnstream.steps": count,
            },
        )

    def rpc_span(self, service: str, method: str, metadata: Any) -> AbstractContextManager[Span]:
        """The SERVER span of one call, continuing the trace its metadata carries, if any."""
        from opentelemetry import propagate, trace

        carrier = {key: value for key, value in metadata or () if isinstance(value, str)}
        # Status and exceptions are set by ``_end_rpc`` from the call's gRPC status.
        return self.tracer.start_as_current_span(
            f"{service}/{method}",
            context=propagate.extract(carrier),
            kind=trace.SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": method},
            record_exception=False,
            set_status_on_exception=False,
        )

    def shutdown(self) -> None:
        """Flush the spans not exported yet, then stop the provider."""
        self.provider.shutdown()


def check(enabled: bool, environ: Mapping[str, str] | None = None) -> list[str]:
    """The exporters ``OTEL_TRACES_EXPORTER`` names; TracingError when ``--otel`` cannot work.

    Off: nothing is checked (and nothing imported).
    """
    if not enabled:
        return []
    env = os.environ if environ is None else environ
    raw = env.get("OTEL_TRACES_EXPORTER", "") or DEFAULT_EXPORTER
    names = [name.strip().lower() for name in raw.split(",") if name.strip()]
    unknown = [name for name in names if name not in EXPORTERS]
    if unknown:
        raise TracingError(
            f"--otel: OTEL_TRACES_EXPORTER={raw!r} names {', '.join(unknown)}: "
            f"use {', '.join(EXPORTERS)} (comma separated for several)"
        )
    modules = [SDK_MODULE] + ([OTLP_MODULE] if "otlp" in names else [])
    try:
        for module in modules:
            importlib.import_module(module)
    except ImportError as exc:
        raise TracingError(
            f"--otel needs the OpenTelemetry packages ({exc.name} is missing): {INSTALL_HINT}"
        ) from None
    return names


def setup(
    enabled: bool, exporter: SpanExporter | None = None, environ: Mapping[str, str] | None = None
) -> Tracing:
    """The server's tracing: ``OFF`` unless ``enabled``; TracingError when it cannot work.

    ``exporter`` replaces the ones ``OTEL_TRACES_EXPORTER`` names and gets each span as it
    ends (tests pass an ``InMemorySpanExporter``).
    """
    names = check(enabled, environ)
    if not enabled:
        return OFF
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    defaults: dict[str, str | int] = {
        "service.name": DEFAULT_SERVICE_NAME,
        "service.instance.id": str(uuid.uuid4()),
        "process.pid": os.getpid(),
    }
    # Resource.create lets these defaults win over OTEL_SERVICE_NAME and
    # OTEL_RESOURCE_ATTRIBUTES; merging what those say on top makes them win instead.
    resource = Resource.create(defaults).merge(OTELResourceDetector().detect())
    provider = TracerProvider(resource=resource)
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        for name in names:
            if name != "none":
                provider.add_span_processor(BatchSpanProcessor(_exporter(name)))
    return OtelTracing(provider)


def _exporter(name: str) -> SpanExporter:
    """The exporter ``OTEL_TRACES_EXPORTER`` calls ``name`` (OTLP reads its own variables)."""
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


class _RpcSpans(grpc.aio.ServerInterceptor):
    """Wraps the handler of every call to one of ``services`` in that call's span."""

    def __init__(self, tracing: OtelTracing, services: frozenset[str]) -> None:
        self.tracing = tracing
        self.services = services

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """The call's handler, traced when its service is one of ours."""
        handler = await continuation(handler_call_details)
        service, _, method = handler_call_details.method.lstrip("/").rpartition("/")
        if handler is None or service not in self.services:
            return handler
        kind = (handler.request_streaming, handler.response_streaming)
        attribute, factory = _BEHAVIORS[kind]
        behavior = getattr(handler, attribute)
        metadata = handler_call_details.invocation_metadata
        traced = (
            self._traced_generator(behavior, service, method, metadata)
            if inspect.isasyncgenfunction(behavior)
            else self._traced(behavior, service, method, metadata)
        )
        return factory(
            traced,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _traced(
        self, behavior: Callable[..., Awaitable[Any]], service: str, method: str, metadata: Any
    ) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]:
        """``behavior`` (a coroutine function: the call's whole handler) inside its span."""

        async def traced(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            with self.tracing.rpc_span(service, method, metadata) as span:
                try:
                    result = await behavior(request, context)
                except BaseException as exc:
                    _end_rpc(span, context, exc)
                    raise
                _end_rpc(span, context, None)
                return result

        return traced

    def _traced_generator(
        self, behavior: Callable[..., AsyncIterator[Any]], service: str, method: str, metadata: Any
    ) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Any]]:
        """``behavior`` (an async generator function: a streaming reply) inside its span."""

        async def traced(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            with self.tracing.rpc_span(service, method, metadata) as span:
                try:
                    async for response in behavior(request, context):
                        yield response
                except BaseException as exc:
                    _end_rpc(span, context, exc)
                    raise
                _end_rpc(span, context, None)

        return traced


_BEHAVIORS: dict[tuple[bool, bool], tuple[str, Callable[..., grpc.RpcMethodHandler]]] = {
    (False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler),
    (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler),
    (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler),
    (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler),
}


def _end_rpc(
    span: Span, context: grpc.aio.ServicerContext[Any, Any], error: BaseException | None
) -> None:
    """Record the call's gRPC status on its span: the code, and ERROR when it is not OK."""
    from opentelemetry.trace import Status, StatusCode

    code = _status_code(context, error)
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code is not grpc.StatusCode.OK:
        span.set_status(Status(StatusCode.ERROR, code.name))
        if error is not None and not isinstance(error, _EXPECTED_ENDS):
            span.record_exception(error)


def _status_code(
    context: grpc.aio.ServicerContext[Any, Any], error: BaseException | None
) -> grpc.StatusCode:
    """The status the call ends with: as set (``abort``, ``set_code``), else from ``error``."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if error is None:
        return grpc.StatusCode.OK
    if isinstance(error, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN
