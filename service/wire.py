"""The Stream RPC's two hot messages straight from and to wire bytes.

Almost every message a busy server sees is a ``Steps`` in and an ``Outputs`` out. Through
protobuf objects, a Steps' floats become numpy element by element and an Outputs' numpy
floats become Python floats and back; for small messages that costs more than the model
step. So the Stream method is registered with this module's (de)serializers:

- ``read_request``: a ``StreamRequest`` that is exactly ``steps {start, x (packed)}`` is
  read into a ``StepsFrame`` (``x`` taken from the packed bytes at once); anything else
  (Open, End, unpacked or repeated fields, unknown fields) is parsed by protobuf as usual,
  so the semantics are protobuf's either way.
- ``write_response``: the servicer may write an ``Outputs`` as bytes already encoded by
  ``outputs_bytes`` (byte-identical to protobuf's serialization); other replies are
  protobuf messages.

Every other method keeps the generated (de)serializers; ``add_to_server`` registers them
all from the service descriptor, so a method added to the proto is served without edits here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from google.protobuf import message_factory

from rnnstream.v1 import rnnstream_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["Predictor"]

_STEPS = 0x12  # StreamRequest.steps: field 2, length-delimited
_START = 0x08  # Steps.start: field 1, varint
_X = 0x12  # Steps.x: field 2, length-delimited (packed)
_OUTPUTS = 0x12  # StreamResponse.outputs: field 2, length-delimited
_UINT64 = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class StepsFrame:
    """A StreamRequest carrying Steps: ``start`` and ``x``, flat float32 (row-major steps)."""

    start: int
    x: np.ndarray


def read_request(data: bytes) -> StepsFrame | pb.StreamRequest:
    """Deserialize a Stream request: a plain Steps message fast, anything else by protobuf."""
    frame = _steps_frame(data)
    if frame is not None:
        return frame
    return pb.StreamRequest.FromString(data)


def write_response(response: bytes | pb.StreamResponse) -> bytes:
    """Serialize a Stream reply: pre-encoded bytes as they are, messages by protobuf."""
    if isinstance(response, bytes):
        return response
    return response.SerializeToString()


def outputs_bytes(start: int, y: np.ndarray, states: np.ndarray | None) -> bytes:
    """``StreamResponse{outputs: {start, y, state}}`` as protobuf would serialize it."""
    if not 0 <= start <= _UINT64:
        raise ValueError(f"Outputs.start {start} is not a uint64")
    body = b""
    if start:
        body += bytes((_START,)) + _varint(start)
    body += _packed(2, y)
    if states is not None:
        body += _packed(3, states)
    return bytes((_OUTPUTS,)) + _varint(len(body)) + body


def add_to_server(servicer: Any, server: grpc.aio.Server) -> None:
    """Register every Predictor method on ``server``; Stream with this module's codecs."""
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in SERVICE.methods:
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        deserialize: Callable[[bytes], Any] = request_class.FromString
        serialize: Callable[[Any], bytes] = response_class.SerializeToString
        if method.name == "Stream":
            deserialize, serialize = read_request, write_response
        factory = _HANDLER_FACTORIES[(method.client_streaming, method.server_streaming)]
        handlers[method.name] = factory(
            getattr(servicer, method.name),
            request_deserializer=deserialize,
            response_serializer=serialize,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),)
    )
    server.add_registered_method_handlers(SERVICE.full_name, handlers)  # type: ignore[attr-defined]


_HANDLER_FACTORIES: dict[tuple[bool, bool], Callable[..., grpc.RpcMethodHandler]] = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def _steps_frame(data: bytes) -> StepsFrame | None:
    """``data`` as a StepsFrame when it is exactly ``steps {start? x?}``, else None."""
    n = len(data)
    if n < 2 or data[0] != _STEPS:
        return None
    length, i = _read_size(data, 1)
    if length < 0 or i + length != n:
        return None  # more than the one Steps field (or truncated): protobuf decides
    start = 0
    x: np.ndarray | None = None
    while i < n:
        tag = data[i]
        if tag == _START:
            start, i = _read_varint(data, i + 1)
            if start < 0:
                return None
            start &= _UINT64
        elif tag == _X and x is None:
            size, i = _read_size(data, i + 1)
            if size < 0 or size % 4 or i + size > n:
                return None
            # A copy: aligned and writable, and it does not keep the message alive.
            x = np.frombuffer(data, dtype="<f4", count=size // 4, offset=i).astype(np.float32)
            i += size
        else:
            return None  # unpacked or repeated x, unknown fields: protobuf's rules apply
    if i != n:
        return None
    return StepsFrame(start, x if x is not None else np.empty(0, dtype=np.float32))


def _read_size(data: bytes, i: int) -> tuple[int, int]:
    """A length prefix at ``data[i:]``: as protobuf, at most 5 bytes and below 2**31 (else -1)."""
    value, i = _read_varint(data, i, max_bytes=5)
    return (value if value < 1 << 31 else -1), i


def _read_varint(data: bytes, i: int, max_bytes: int = 10) -> tuple[int, int]:
    """A base-128 varint at ``data[i:]``: (value, next index); value -1 if malformed."""
    value = shift = 0
    n = len(data)
    while i < n and shift < 7 * max_bytes:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7
    return -1, i


def _varint(value: int) -> bytes:
    """Protobuf base-128 varint of a non-negative int."""
    if value < 0x80:
        return _SMALL_VARINTS[value]
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL_VARINTS = [bytes((value,)) for value in range(0x80)]


def _packed(number: int, array: np.ndarray) -> bytes:
    """A packed repeated float field (nothing when empty, as protobuf writes it)."""
    if array.size == 0:
        return b""
    raw = np.ascontiguousarray(array, dtype="<f4").tobytes()
    return _varint(number << 3 | 2) + _varint(len(raw)) + raw
