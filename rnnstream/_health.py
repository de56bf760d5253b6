"""The standard ``grpc.health.v1`` check by hand: the SDK carries no health stubs.

``HealthCheckRequest`` and ``HealthCheckResponse`` have one field each, so the SDK writes
and reads their bytes itself rather than depend on ``grpcio-health-checking``.
"""

from __future__ import annotations

from typing import Any

import grpc

HEALTH_CHECK_METHOD = "/grpc.health.v1.Health/Check"
HEALTH_STATUSES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def health_request(service: str) -> bytes:
    """A ``grpc.health.v1.HealthCheckRequest`` for ``service`` ("": the whole server)."""
    data = service.encode()
    if not data:
        return b""
    if len(data) > 127:
        raise ValueError("service name too long")
    return b"\x0a" + bytes([len(data)]) + data  # field 1, length-delimited


def health_status(response: bytes) -> str:
    """The status name in a ``HealthCheckResponse`` (field 1, an enum varint)."""
    if len(response) >= 2 and response[0] == 0x08:
        return HEALTH_STATUSES.get(response[1], str(response[1]))
    return "UNKNOWN"


def _raw(data: bytes) -> bytes:
    return data


def health_check_call(channel: grpc.Channel | grpc.aio.Channel) -> Any:
    """The Check method on a blocking or asyncio ``channel``, taking and returning bytes."""
    return channel.unary_unary(
        HEALTH_CHECK_METHOD, request_serializer=_raw, response_deserializer=_raw
    )
