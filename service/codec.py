"""Protobuf <-> numpy, and the checks that make a message's arrays safe to run.

One place decodes request payloads into float32 arrays (refusing wrong widths, empty or
non-finite inputs with a message that says what to send instead) and encodes results
back. Tested without a network.

The Stream method's two hot messages skip protobuf objects: almost every message a busy
server sees is a ``Steps`` in and an ``Outputs`` out, and through protobuf objects their
floats are converted one Python float at a time, which for small messages costs more than
the model step. So Stream is registered with this module's (de)serializers:

- ``read_stream_request``: a ``StreamRequest`` that is exactly ``steps {start, x
  (packed)}`` is read into a ``StepsFrame`` (``x`` taken from the packed bytes at once);
  anything else (Open, End, unpacked or repeated fields, unknown fields) is parsed by
  protobuf as usual, so the semantics are protobuf's either way.
- ``write_stream_response``: the servicer may write an ``Outputs`` as bytes already
  encoded by ``outputs_bytes`` (byte-identical to protobuf's serialization); other replies
  are protobuf messages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rnnstream.manifest import Manifest
from rnnstream.server.end_reasons import EndReason
from rnnstream.server.errors import InvalidArgument, ResourceExhausted
from rnnstream.server.graph import StepGraph
from rnnstream.v1 import rnnstream_pb2 as pb

# Below this many values, element-wise conversion beats numpy's generic sequence path.
SMALL = 48


def _floats(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """A repeated float field (or an already decoded array) as a float32 array."""
    if isinstance(values, np.ndarray):
        return values
    n = len(values)
    if n <= SMALL:
        return np.fromiter(values, dtype=np.float32, count=n)
    return np.asarray(values, dtype=np.float32)


def decode_steps(
    values: Sequence[float] | np.ndarray, manifest: Manifest, max_steps: int, field: str
) -> np.ndarray:
    """Row-major ``[n_steps * F]`` floats -> ``[n_steps, F]`` float32, checked.

    ``values`` is the protobuf field or the array ``StepsFrame`` already decoded.
    """
    x = _floats(values)
    f = manifest.n_features
    if x.size == 0:
        raise InvalidArgument(
            f"{field} is empty: send at least one step, row-major [n_steps, {f}] "
            f"({f} value{'s' if f != 1 else ''} per step for model {manifest.name})"
        )
    if x.size % f:
        raise InvalidArgument(
            f"{field} has {x.size} values, but model {manifest.name} takes {f} feature"
            f"{'s' if f != 1 else ''} per step: send a multiple of {f} values, "
            f"row-major [n_steps, {f}]"
        )
    n = x.size // f
    if n > max_steps:
        raise ResourceExhausted(
            f"{field} carries {n} steps; the limit is {max_steps} per message: split it "
            "into several messages"
        )
    _check_finite(x, f, field)
    return x.reshape(n, f)  # [n_steps, F]


def decode_sequences(request: pb.PredictRequest, manifest: Manifest, max_steps: int) -> np.ndarray:
    """PredictRequest.x ``[n_sequences * T * F]`` -> ``[n_sequences, T, F]`` float32, checked."""
    n_seq = request.n_sequences
    f = manifest.n_features
    if n_seq == 0:
        raise InvalidArgument(
            "PredictRequest.n_sequences is 0: set it to the number of sequences in x, "
            f"which is row-major [n_sequences, T, {f}]"
        )
    x = _floats(request.x)
    per_sequence, rest = divmod(x.size, n_seq)
    if x.size == 0 or rest or per_sequence % f:
        raise InvalidArgument(
            f"PredictRequest.x has {x.size} values, which is not n_sequences={n_seq} "
            f"sequences of T steps of {f} feature{'s' if f != 1 else ''} (model "
            f"{manifest.name}): send n_sequences * T * {f} values, row-major "
            f"[n_sequences, T, {f}], T >= 1"
        )
    steps = per_sequence // f
    if n_seq * steps > max_steps:
        raise ResourceExhausted(
            f"PredictRequest carries {n_seq * steps} steps; the limit is {max_steps} per "
            "message: send fewer or shorter sequences per call"
        )
    _check_finite(x, f, "PredictRequest.x")
    return x.reshape(n_seq, steps, f)  # [n_sequences, T, F]


def _check_finite(x: np.ndarray, n_features: int, field: str) -> None:
    """Refuse NaN and infinities, naming the first offending step and feature."""
    if np.isfinite(x).all():
        return
    bad = int(np.flatnonzero(~np.isfinite(x))[0])
    step, feature = divmod(bad, n_features)
    raise InvalidArgument(
        f"{field} has a non-finite value ({x[bad]}) at step {step} of the message, feature "
        f"{feature}: send finite numbers only (fill gaps in the sensor data before sending)"
    )


def model_info(manifest: Manifest, graph: StepGraph) -> pb.ModelInfo:
    """The wire description of a model."""
    return pb.ModelInfo(
        name=manifest.name,
        version=manifest.version,
        n_features=manifest.n_features,
        n_outputs=manifest.n_outputs,
        state_size=manifest.state_size,
        task=manifest.task,
        labels=manifest.labels,
        feature_names=manifest.feature_names,
        output_names=manifest.output_names,
        cell=manifest.cell,
        layers=manifest.layers,
        hidden_size=manifest.hidden_size,
        return_sequences=manifest.return_sequences,
        description=manifest.description,
        provider=graph.provider,
    )


def flat(array: np.ndarray | None) -> list[float]:
    """A float32 array as the flat list a repeated float field takes."""
    if array is None:
        return []
    return np.ascontiguousarray(array, dtype=np.float32).ravel().tolist()


def end_reason(reason: EndReason) -> pb.EndReason.ValueType:
    """The wire enum value of an end reason."""
    return pb.EndReason.ValueType(reason.value)


# --- the Stream method's hot path: Steps in, Outputs out, as wire bytes -----------

_STEPS = 0x12  # StreamRequest.steps: field 2, length-delimited
_START = 0x08  # Steps.start: field 1, varint
_X = 0x12  # Steps.x: field 2, length-delimited (packed)
_OUTPUTS = 0x12  # StreamResponse.outputs: field 2, length-delimited
_DURABLE_STEP = 0x20  # Outputs.durable_step: field 4, varint
_UINT64 = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class StepsFrame:
    """A StreamRequest carrying Steps: ``start`` and ``x``, flat float32 (row-major steps)."""

    start: int
    x: np.ndarray


def read_stream_request(data: bytes) -> StepsFrame | pb.StreamRequest:
    """Deserialize a Stream request: a plain Steps message fast, anything else by protobuf."""
    frame = _steps_frame(data)
    if frame is not None:
        return frame
    return pb.StreamRequest.FromString(data)


def write_stream_response(response: bytes | pb.StreamResponse) -> bytes:
    """Serialize a Stream reply: pre-encoded bytes as they are, messages by protobuf."""
    if isinstance(response, bytes):
        return response
    return response.SerializeToString()


def outputs_bytes(
    start: int, y: np.ndarray, states: np.ndarray | None, durable_step: int | None = None
) -> bytes:
    """``StreamResponse{outputs: {start, y, state, durable_step}}`` as protobuf serializes it.

    ``durable_step`` None leaves the optional field unset.
    """
    if not 0 <= start <= _UINT64:
        raise ValueError(f"Outputs.start {start} is not a uint64")
    body = b""
    if start:
        body += bytes((_START,)) + _varint(start)
    body += _packed(2, y)
    if states is not None:
        body += _packed(3, states)
    if durable_step is not None:
        if not 0 <= durable_step <= _UINT64:
            raise ValueError(f"Outputs.durable_step {durable_step} is not a uint64")
        body += bytes((_DURABLE_STEP,)) + _varint(durable_step)
    return bytes((_OUTPUTS,)) + _varint(len(body)) + body


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
