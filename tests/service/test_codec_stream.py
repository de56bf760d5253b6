"""The codec's Stream hot path: byte-identical to protobuf, protobuf's rules otherwise."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnstream.server import codec
from rnnstream.v1 import rnnstream_pb2 as pb


@pytest.mark.parametrize(
    ("start", "n", "o", "s"),
    [(0, 1, 1, 0), (1, 3, 2, 4), (2**40, 256, 1, 0), (127, 40, 3, 64), (2**64 - 1, 2, 300, 0)],
)
def test_outputs_bytes_are_what_protobuf_writes(start, n, o, s):
    rng = np.random.default_rng(n)
    y = rng.standard_normal((n, o)).astype(np.float32)
    states = rng.standard_normal((n, s)).astype(np.float32) if s else None
    plain = pb.StreamResponse(
        outputs=pb.Outputs(
            start=start,
            y=y.ravel().tolist(),
            state=[] if states is None else states.ravel().tolist(),
        )
    )
    assert codec.outputs_bytes(start, y, states) == plain.SerializeToString()
    assert codec.write_stream_response(plain) == plain.SerializeToString()


def test_outputs_bytes_of_no_outputs():
    empty = np.empty((0, 1), np.float32)
    want = pb.StreamResponse(outputs=pb.Outputs()).SerializeToString()
    assert codec.outputs_bytes(0, empty, None) == want


@given(
    start=st.integers(0, 2**64 - 1),
    x=st.lists(st.floats(width=32, allow_nan=False), max_size=50),
)
@settings(max_examples=300, deadline=None)
def test_a_steps_message_is_read_fast_and_equal_to_protobuf(start, x):
    data = pb.StreamRequest(steps=pb.Steps(start=start, x=x)).SerializeToString()
    frame = codec.read_stream_request(data)
    assert isinstance(frame, codec.StepsFrame)
    assert frame.start == start
    assert frame.x.dtype == np.float32 and frame.x.flags.writeable and frame.x.flags.aligned
    np.testing.assert_array_equal(frame.x, np.array(x, np.float32))


def test_everything_but_plain_steps_is_left_to_protobuf():
    open_ = pb.StreamRequest(open=pb.Open(model="m"))
    end = pb.StreamRequest(end=pb.End(close=True))
    for message in (open_, end, pb.StreamRequest()):
        assert codec.read_stream_request(message.SerializeToString()) == message
    # x written unpacked (field 2, wire type 5 per value), as some encoders may
    unpacked = bytes([0x08, 3]) + b"".join(
        bytes([0x15]) + np.float32(v).tobytes() for v in (1.5, -2.0)
    )
    data = bytes([0x12, len(unpacked)]) + unpacked
    parsed = codec.read_stream_request(data)
    assert isinstance(parsed, pb.StreamRequest)
    assert parsed.steps.start == 3 and list(parsed.steps.x) == [1.5, -2.0]
    # Steps then End in one buffer: the oneof's last field wins, as protobuf says
    steps = pb.StreamRequest(steps=pb.Steps(start=1, x=[1.0]))
    both = steps.SerializeToString() + end.SerializeToString()
    assert codec.read_stream_request(both) == end


@given(data=st.binary(max_size=64))
@settings(max_examples=500, deadline=None)
def test_any_bytes_read_as_protobuf_would(data):
    try:
        want = pb.StreamRequest.FromString(data)
    except Exception:  # protobuf refuses it: so must we (the same error)
        with pytest.raises(Exception):  # noqa: B017
            codec.read_stream_request(data)
        return
    got = codec.read_stream_request(data)
    if isinstance(got, codec.StepsFrame):
        assert want.WhichOneof("kind") == "steps"
        assert got.start == want.steps.start
        np.testing.assert_array_equal(got.x, np.array(want.steps.x, np.float32))
    else:
        assert got == want


@given(
    prefix=st.binary(max_size=3),
    start=st.integers(0, 2**64 - 1),
    x=st.lists(st.floats(width=32), max_size=8),
)
@settings(max_examples=300, deadline=None)
def test_steps_framed_bytes_with_noise_read_as_protobuf_would(prefix, start, x):
    inner = pb.Steps(start=start, x=x).SerializeToString()
    for data in (
        bytes([0x12, len(inner)]) + inner + prefix,
        bytes([0x12, len(inner) + len(prefix)]) + inner + prefix,
        prefix + bytes([0x12, len(inner)]) + inner,
    ):
        test_any_bytes_read_as_protobuf_would.hypothesis.inner_test(data)


@pytest.mark.parametrize("pad", [1, 4, 5, 9])
def test_length_prefixes_longer_than_protobuf_allows_are_refused_alike(pad):
    """A size padded with 0x80 continuation bytes: protobuf takes at most 5 bytes."""

    def padded(size: int) -> bytes:
        return bytes([size | 0x80] + [0x80] * (pad - 1) + [0x00]) if pad else bytes([size])

    x = np.float32(1.5).tobytes()
    inner = bytes([0x08, 5, 0x12]) + padded(len(x)) + x
    for data in (
        bytes([0x12]) + padded(len(inner)) + inner,  # the Steps length padded
        bytes([0x12, len(inner)]) + inner,  # the x size padded
    ):
        test_any_bytes_read_as_protobuf_would.hypothesis.inner_test(data)


def test_outputs_bytes_refuse_a_start_that_is_not_uint64():
    y = np.zeros((1, 1), np.float32)
    for start in (-1, 2**64):
        with pytest.raises(ValueError, match="uint64"):
            codec.outputs_bytes(start, y, None)


@given(
    start=st.integers(0, 2**64 - 1),
    durable_step=st.one_of(st.none(), st.integers(0, 2**64 - 1)),
    n=st.integers(0, 4),
    with_states=st.booleans(),
)
@settings(max_examples=200, deadline=None)
def test_outputs_bytes_with_durable_step_are_what_protobuf_writes(
    start, durable_step, n, with_states
):
    y = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
    states = np.ones((n, 3), np.float32) if with_states else None
    plain = pb.StreamResponse(
        outputs=pb.Outputs(
            start=start,
            y=y.ravel().tolist(),
            state=[] if states is None else states.ravel().tolist(),
            durable_step=durable_step,
        )
    )
    assert codec.outputs_bytes(start, y, states, durable_step) == plain.SerializeToString()
    back = pb.StreamResponse.FromString(codec.outputs_bytes(start, y, states, durable_step))
    assert back.outputs.HasField("durable_step") is (durable_step is not None)
