"""Stored-session entries: exact round trips, and a clear reason for every bad entry."""

from __future__ import annotations

import dataclasses
import struct

import numpy as np
import pytest

from rnnstream.server.store import GraphIdentity, StoredSession, StoreEntryError
from rnnstream.server.store.entry import decode_entry, encode_entry
from tests.service.store.conftest import GRAPH, stored


def test_round_trip_is_bit_exact() -> None:
    original = stored("sessión-1", seed=3)
    special = np.array([np.nan, -0.0, np.inf, 1e-45, -3.4e38], np.float32)
    special[0] = np.frombuffer(b"\x01\x00\xc0\x7f", np.float32)[0]  # a NaN with a payload
    record = dataclasses.replace(
        original.record,
        state=special,
        replay_states=np.arange(10, dtype=np.float32).reshape(2, 5),
        return_sequences=False,
        return_state=True,
    )
    back = decode_entry(encode_entry(StoredSession(record, GRAPH), checkpointed_at=1234.5))
    assert back.graph == GRAPH
    assert back.checkpointed_at == 1234.5
    assert back.expires_at == 1234.5 + record.idle_ttl_s
    assert back.durable_step == record.next_step
    r = back.record
    assert r.state.dtype == np.float32 and r.state.tobytes() == special.tobytes()
    assert r.replay_y is not None and record.replay_y is not None
    assert r.replay_y.tobytes() == record.replay_y.tobytes()
    assert r.replay_states is not None and r.replay_states.shape == (2, 5)
    assert record.replay_states is not None
    assert r.replay_states.tobytes() == record.replay_states.tobytes()
    for name in ("session_id", "next_step", "sequence_steps", "replay_start", "idle_ttl_s"):
        assert getattr(r, name) == getattr(record, name)
    assert (r.return_sequences, r.return_state, r.age_s) == (False, True, 12.5)


def test_absent_and_empty_replay_caches_stay_as_they_were() -> None:
    none = dataclasses.replace(stored("s").record, replay_y=None, replay_states=None)
    back = decode_entry(encode_entry(StoredSession(none, GRAPH), 0.0)).record
    assert back.replay_y is None and back.replay_states is None
    empty = dataclasses.replace(none, replay_y=np.zeros((0, 3), np.float32))
    back = decode_entry(encode_entry(StoredSession(empty, GRAPH), 0.0)).record
    assert back.replay_y is not None and back.replay_y.shape == (0, 3)


def test_encoding_refuses_arrays_that_do_not_fit_the_graph() -> None:
    record = dataclasses.replace(stored("s").record, state=np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="state has shape"):
        encode_entry(StoredSession(record, GRAPH), 0.0)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda b: b[:10], "shorter than its header"),
        (lambda b: b[:-9] + b[-8:], "checksum mismatch"),
        (lambda b: b[:100] + bytes([b[100] ^ 1]) + b[101:], "checksum mismatch"),
        (lambda b: b"XXXX" + b[4:], "not a session entry"),
        (lambda b: b[:4] + struct.pack("<H", 9) + b[6:], "entry format 9"),
        (lambda b: b"", "shorter than its header"),
    ],
)
def test_a_damaged_entry_raises_with_its_reason(damage, reason: str) -> None:
    data = encode_entry(stored("s"), 0.0)
    with pytest.raises(StoreEntryError, match=reason):
        decode_entry(damage(data))


def test_lengths_that_overrun_the_entry_are_refused_even_with_a_valid_checksum() -> None:
    import zlib

    data = encode_entry(stored("s"), 0.0)
    body = bytearray(data[:-4])
    struct.pack_into("<I", body, 60, 1_000_000)  # state_size, past the end
    forged = bytes(body) + struct.pack("<I", zlib.crc32(body))
    with pytest.raises(StoreEntryError, match="truncated"):
        decode_entry(forged)


def test_graph_mismatch_names_the_reason() -> None:
    served = GRAPH
    assert GRAPH.mismatch(served) is None
    other_sha = dataclasses.replace(GRAPH, onnx_sha256="cd" * 32)
    assert "another graph" in (other_sha.mismatch(served) or "")
    other_shape = dataclasses.replace(GRAPH, state_size=6)
    assert "shapes differ" in (other_shape.mismatch(served) or "")
    other_model = GraphIdentity("other", "1", GRAPH.onnx_sha256, 3, 5)
    assert "other/1" in (other_model.mismatch(served) or "")
