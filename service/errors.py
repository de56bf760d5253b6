"""Domain errors that carry their gRPC status code.

The core raises these with a message that says what was wrong and what to send instead;
the servicer maps them to a status in one place. A refused request changes no state.
"""

from __future__ import annotations

import grpc


class ServiceError(Exception):
    """Base of every error a client can cause; ``code`` is the gRPC status it maps to."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(ServiceError):
    """A malformed request: wrong shape, non-finite values, messages out of order."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServiceError):
    """An unknown model, version or session."""

    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(ServiceError):
    """A request the session's state does not allow now, such as a gap in step indices."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(ServiceError):
    """A limit was reached: sessions, steps per message, message size, streams."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ServiceError):
    """The server is draining or otherwise cannot take the request now; retry elsewhere."""

    code = grpc.StatusCode.UNAVAILABLE


class Unauthenticated(ServiceError):
    """The caller did not prove who it is: no token, a malformed or unknown one.

    ``reason`` is a short label for metrics (``missing``, ``malformed``, ...); the message
    says what to send, and never repeats what was sent.
    """

    code = grpc.StatusCode.UNAUTHENTICATED

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason
