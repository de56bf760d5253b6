"""The SDK's exceptions: one hierarchy, and the one function that maps ``grpc.RpcError`` to it.

Every error the server can send arrives as a gRPC status; :func:`from_rpc_error` turns it
into the matching :class:`RnnstreamError` subclass, keeping the server's message (which
says what to fix). Input the SDK can check itself (shapes, non-finite values) raises a
plain ``ValueError`` before anything is sent.

Example::

    try:
        client.session(model="no-such-model")
    except rnnstream.NotFoundError as exc:
        print(exc.code, exc.details)   # StatusCode.NOT_FOUND, "model 'no-such-model' ..."
"""

from __future__ import annotations

import grpc


class RnnstreamError(Exception):
    """Base of every error the SDK raises for a failed call.

    ``code`` is the gRPC status code (None for errors the SDK raises itself, such as a
    session ended by the server) and ``details`` the server's message.
    """

    default_code: grpc.StatusCode | None = None

    def __init__(self, details: str, code: grpc.StatusCode | None = None) -> None:
        self.code = self.default_code if code is None else code
        self.details = details
        super().__init__(details)

    def __str__(self) -> str:
        name = self.code.name if self.code is not None else "ERROR"
        return f"{name}: {self.details}"


class InvalidArgumentError(RnnstreamError):
    """The server refused a malformed message (shape, non-finite values, message order)."""

    default_code = grpc.StatusCode.INVALID_ARGUMENT


class NotFoundError(RnnstreamError):
    """An unknown model, version or session (it may have ended or expired)."""

    default_code = grpc.StatusCode.NOT_FOUND


class FailedPreconditionError(RnnstreamError):
    """The session's state does not allow the request (a gap in step indices, ...)."""

    default_code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhaustedError(RnnstreamError):
    """A server limit: too many sessions, too many steps or bytes in one message."""

    default_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class UnavailableError(RnnstreamError):
    """The server cannot be reached or is draining (after the SDK's own retries)."""

    default_code = grpc.StatusCode.UNAVAILABLE


class UnauthenticatedError(RnnstreamError):
    """The server did not accept who the client is: no token, a malformed or unknown one."""

    default_code = grpc.StatusCode.UNAUTHENTICATED


class DataLossError(RnnstreamError):
    """Outputs the server computed were lost with a dropped connection and cannot be replayed.

    Raised on resume when the server no longer caches the outputs of steps it applied
    before the drop (keep ``chunk_size * window`` at or below the server's
    ``--replay-steps``), when a many-to-one ``Final`` was lost after the server ended
    the sequence, or when a server restored the session from an older step than the
    client can resend from (see ``resend_buffer_steps``). The session itself is intact:
    its state and ``next_step`` are right.
    """

    default_code = grpc.StatusCode.DATA_LOSS


class SessionEndedError(RnnstreamError):
    """The server ended the session's stream; ``reason`` says why.

    ``reason`` is the wire enum's name without its prefix: ``"SUPERSEDED"`` (another
    stream resumed the session), ``"DELETED"``, ``"IDLE_TTL"``, ``"EVICTED"``,
    ``"DRAINING"`` (only raised once the SDK's retries are spent) or ``"CLIENT_END"``.
    """

    def __init__(
        self, details: str, reason: str, code: grpc.StatusCode | None = grpc.StatusCode.ABORTED
    ) -> None:
        super().__init__(details, code)
        self.reason = reason

    def __str__(self) -> str:
        return f"session ended ({self.reason}): {self.details}"


_BY_CODE: dict[grpc.StatusCode, type[RnnstreamError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DATA_LOSS: DataLossError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
}


def from_rpc_error(error: grpc.RpcError) -> RnnstreamError:
    """The SDK exception for a failed gRPC call (sync or asyncio), keeping code and message.

    Example::

        try:
            stub.ListModels(request)
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err
    """
    code_fn = getattr(error, "code", None)
    details_fn = getattr(error, "details", None)
    code = code_fn() if callable(code_fn) else None
    details = details_fn() if callable(details_fn) else None
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    cls = _BY_CODE.get(code, RnnstreamError)
    return cls(str(details or code.name.lower()), code)


# How grpc's asyncio client reports a call the server's grpc core refused before any
# handler saw it (past ``grpc.server.max_pending_requests``): the write of the Open fails
# and the call ends INTERNAL with this message instead of the server's RESOURCE_EXHAUSTED.
CORE_REFUSAL_DETAILS = "Internal error from Core"


def _refused_before_handler(error: RnnstreamError) -> bool:
    """Whether ``error`` is a server shedding load: RESOURCE_EXHAUSTED, or grpc core's INTERNAL."""
    if error.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return True
    return error.code == grpc.StatusCode.INTERNAL and error.details == CORE_REFUSAL_DETAILS


def is_retryable(error: RnnstreamError, at_open: bool = False) -> bool:
    """Whether a session should reconnect and resume after ``error`` on its stream.

    Retried: the server unreachable or draining (``UNAVAILABLE``, ``SessionEnded`` with
    reason ``DRAINING``), the stream cancelled underneath the SDK (connection reset) and
    no response within the client's timeout; and, with ``at_open`` (the error came before
    the stream's ``Opened``), a server shedding a reconnect storm: it refuses new calls with
    ``RESOURCE_EXHAUSTED``, or its grpc core refuses them before any handler and the client
    sees ``INTERNAL`` "Internal error from Core"; nothing of the session was touched. Not
    retried: everything else the server refused (a message too large, a failed step, any
    other ``INTERNAL``), and a session another client took over (``SUPERSEDED``).
    """
    if isinstance(error, SessionEndedError):
        return error.reason == "DRAINING"
    if at_open and _refused_before_handler(error):
        return True
    return isinstance(error, UnavailableError) or error.code == grpc.StatusCode.CANCELLED
