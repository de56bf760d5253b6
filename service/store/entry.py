"""A stored session and its compact binary encoding (versioned, checksummed, no pickle).

An entry is a fixed little-endian header, the UTF-8 strings it names, the float32 arrays
(state ``[S]``, then the replay cache ``[r, O]`` and ``[r, S]``) and a CRC-32 of all of it:

    magic "RNSS", format u16, flags u8, reserved u8,
    next_step, sequence_steps, replay_start        i64 each
    idle_ttl_s, age_s, checkpointed_at             f64 each
    n_outputs, state_size, replay_y rows, replay_states rows        u32 each
    lengths of session_id, model, version, onnx_sha256             u16 each
    (format 2) length of principal                                 u16
    the strings, the arrays, crc32 u32

Format 2 adds the principal the session belongs to (a name, never a credential). An
entry whose principal is "" (a server without authentication) is written in format 1,
which servers from before principals read too; a format 1 entry reads as principal "".

Decoding checks every length and the checksum and raises ``StoreEntryError`` with the
reason, so a corrupt or foreign entry never reaches a state table.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np

from rnnstream.server.snapshot import SessionRecord
from rnnstream.server.store.errors import StoreEntryError

MAGIC = b"RNSS"
FORMAT = 2
# The header of each format this server reads: format 2 adds the principal's length.
_HEADERS = {
    1: struct.Struct("<4sHBxqqqdddIIIIHHHH"),
    2: struct.Struct("<4sHBxqqqdddIIIIHHHHH"),
}
_CRC = struct.Struct("<I")
_FLOAT32 = np.dtype("<f4")

_RETURN_SEQUENCES, _RETURN_STATE, _HAS_REPLAY_Y, _HAS_REPLAY_STATES = 1, 2, 4, 8


@dataclass(frozen=True)
class GraphIdentity:
    """The graph a state row belongs to: a row is only ever applied to this same graph."""

    model: str
    version: str
    onnx_sha256: str
    n_outputs: int
    state_size: int

    def mismatch(self, served: GraphIdentity) -> str | None:
        """Why a state of this graph cannot be applied to the ``served`` one, or None."""
        name = f"{self.model}/{self.version}"
        if (self.model, self.version) != (served.model, served.version):
            return f"its model {name} is not {served.model}/{served.version}"
        if self.onnx_sha256 != served.onnx_sha256:
            return (
                f"its state belongs to another graph of {name} "
                f"(sha256 {self.onnx_sha256[:12]}..., now {served.onnx_sha256[:12]}...)"
            )
        if (self.n_outputs, self.state_size) != (served.n_outputs, served.state_size):
            return f"its shapes differ from the served {name}"
        return None


@dataclass(frozen=True)
class StoredSession:
    """One session as the store holds it: its record and the graph its state belongs to.

    ``checkpointed_at`` (wall-clock seconds) is set by the store when it writes the entry;
    whatever a caller passes in is replaced.
    """

    record: SessionRecord
    graph: GraphIdentity
    checkpointed_at: float | None = None

    @property
    def session_id(self) -> str:
        """The session's id."""
        return self.record.session_id

    @property
    def durable_step(self) -> int:
        """The highest step whose state the store holds: the record's ``next_step``."""
        return self.record.next_step

    @property
    def expires_at(self) -> float | None:
        """When the entry expires unless checkpointed again (None until written)."""
        if self.checkpointed_at is None:
            return None
        return self.checkpointed_at + self.record.idle_ttl_s


def encode_entry(stored: StoredSession, checkpointed_at: float) -> bytes:
    """The entry's bytes; raises ValueError when its arrays do not fit its graph."""
    record, graph = stored.record, stored.graph
    state = _rows("state", record.state, (graph.state_size,))
    replay_y = _optional_rows("replay_y", record.replay_y, graph.n_outputs)
    replay_states = _optional_rows("replay_states", record.replay_states, graph.state_size)
    names = [record.session_id, graph.model, graph.version, graph.onnx_sha256]
    form = FORMAT if record.principal else 1
    if form >= 2:
        names.append(record.principal)
    texts = [s.encode() for s in names]
    flags = (
        _RETURN_SEQUENCES * record.return_sequences
        | _RETURN_STATE * record.return_state
        | _HAS_REPLAY_Y * (replay_y is not None)
        | _HAS_REPLAY_STATES * (replay_states is not None)
    )
    header = _HEADERS[form].pack(
        MAGIC,
        form,
        flags,
        record.next_step,
        record.sequence_steps,
        record.replay_start,
        record.idle_ttl_s,
        record.age_s,
        checkpointed_at,
        graph.n_outputs,
        graph.state_size,
        0 if replay_y is None else len(replay_y),
        0 if replay_states is None else len(replay_states),
        *(len(t) for t in texts),
    )
    arrays = [a.tobytes() for a in (state, replay_y, replay_states) if a is not None]
    body = b"".join([header, *texts, *arrays])
    return body + _CRC.pack(zlib.crc32(body))


def _rows(name: str, array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``array`` as little-endian float32 of exactly ``shape``."""
    if array.shape != shape:
        raise ValueError(f"{name} has shape {array.shape}, its graph needs {shape}")
    return np.ascontiguousarray(array, dtype=_FLOAT32)


def _optional_rows(name: str, array: np.ndarray | None, width: int) -> np.ndarray | None:
    """A replay cache as ``[r, width]`` little-endian float32, or None."""
    if array is None:
        return None
    if array.ndim != 2:
        raise ValueError(f"{name} has shape {array.shape}, its graph needs [rows, {width}]")
    return _rows(name, array, (len(array), width))


def decode_entry(data: bytes) -> StoredSession:
    """The stored session in ``data``; raises StoreEntryError saying what is wrong with it."""
    if len(data) < _HEADERS[1].size + _CRC.size:
        raise StoreEntryError(f"entry of {len(data)} bytes is shorter than its header")
    magic, form = data[:4], int.from_bytes(data[4:6], "little")
    if magic != MAGIC:
        raise StoreEntryError(f"not a session entry (magic {magic!r}, expected {MAGIC!r})")
    header = _HEADERS.get(form)
    if header is None:
        raise StoreEntryError(
            f"entry format {form}, this server reads formats {', '.join(map(str, _HEADERS))}"
        )
    if len(data) < header.size + _CRC.size:
        raise StoreEntryError(f"entry of {len(data)} bytes is shorter than its header")
    body, (crc,) = data[: -_CRC.size], _CRC.unpack(data[-_CRC.size :])
    if zlib.crc32(body) != crc:
        raise StoreEntryError("entry checksum mismatch: the entry is corrupt")
    (
        _,
        _,
        flags,
        next_step,
        sequence_steps,
        replay_start,
        idle_ttl_s,
        age_s,
        checkpointed_at,
        n_outputs,
        state_size,
        replay_y_rows,
        replay_states_rows,
        *text_lengths,
    ) = header.unpack_from(body)
    reader = _Reader(body, header.size)
    try:
        session_id, model, version, sha256, *principal = (reader.text(n) for n in text_lengths)
    except UnicodeDecodeError as e:
        raise StoreEntryError(f"entry names are not UTF-8: {e}") from None
    state = reader.floats((state_size,))
    replay_y = reader.floats((replay_y_rows, n_outputs))
    replay_states = reader.floats((replay_states_rows, state_size))
    if reader.offset != len(body):
        raise StoreEntryError(f"entry has {len(body) - reader.offset} bytes after its arrays")
    record = SessionRecord(
        session_id=session_id,
        state=state,
        next_step=next_step,
        sequence_steps=sequence_steps,
        return_sequences=bool(flags & _RETURN_SEQUENCES),
        return_state=bool(flags & _RETURN_STATE),
        idle_ttl_s=idle_ttl_s,
        age_s=age_s,
        replay_start=replay_start,
        replay_y=replay_y if flags & _HAS_REPLAY_Y else None,
        replay_states=replay_states if flags & _HAS_REPLAY_STATES else None,
        principal=principal[0] if principal else "",
    )
    graph = GraphIdentity(model, version, sha256, n_outputs, state_size)
    return StoredSession(record, graph, checkpointed_at)


class _Reader:
    """Consumes an entry's variable part, refusing to read past its end."""

    def __init__(self, data: bytes, offset: int) -> None:
        self.data = data
        self.offset = offset

    def _take(self, n: int) -> bytes:
        if self.offset + n > len(self.data):
            raise StoreEntryError(
                f"entry is truncated: needs {self.offset + n} bytes, has {len(self.data)}"
            )
        chunk = self.data[self.offset : self.offset + n]
        self.offset += n
        return chunk

    def text(self, n: int) -> str:
        return self._take(n).decode()

    def floats(self, shape: tuple[int, ...]) -> np.ndarray:
        raw = self._take(int(np.prod(shape)) * _FLOAT32.itemsize)
        return np.frombuffer(raw, _FLOAT32).astype(np.float32).reshape(shape)


def decode_entry_or_none(data: bytes) -> StoredSession | None:
    """The stored session in ``data``, or None where ``decode_entry`` would say what is wrong."""
    try:
        return decode_entry(data)
    except StoreEntryError:
        return None
