"""Fuzzing the request decoding and the servicer: no crash, and a refusal changes nothing."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import grpc
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rnnstream.manifest import Manifest
from rnnstream.server import codec
from rnnstream.server.errors import InvalidArgument, ResourceExhausted
from rnnstream.v1 import rnnstream_pb2 as pb
from rnnstream.v1 import rnnstream_pb2_grpc as pb_grpc
from tests.conftest import TINY
from tests.service.duplex import Duplex, outputs_y

MANIFEST = Manifest(
    name="m",
    version="1",
    cell="gru",
    layers=1,
    hidden_size=4,
    n_features=3,
    n_outputs=1,
    state_size=4,
    feature_names=["a", "b", "c"],
    output_names=["y"],
)
floats = st.floats(allow_nan=True, allow_infinity=True, width=32)


@given(values=st.lists(floats, max_size=40), max_steps=st.integers(1, 20))
@settings(max_examples=300, deadline=None)
def test_decode_steps_returns_a_checked_array_or_refuses(values, max_steps):
    try:
        x = codec.decode_steps(values, MANIFEST, max_steps, "Steps.x")
    except (InvalidArgument, ResourceExhausted) as exc:
        assert "Steps.x" in exc.message
        return
    assert x.dtype == np.float32 and x.shape == (len(values) // 3, 3)
    assert 1 <= len(x) <= max_steps and np.isfinite(x).all()


@given(values=st.lists(floats, max_size=40), n_sequences=st.integers(0, 5))
@settings(max_examples=300, deadline=None)
def test_decode_sequences_returns_a_checked_array_or_refuses(values, n_sequences):
    request = pb.PredictRequest(x=values, n_sequences=n_sequences)
    try:
        x = codec.decode_sequences(request, MANIFEST, 100)
    except (InvalidArgument, ResourceExhausted):
        return
    assert x.shape[0] == n_sequences and x.shape[2] == 3 and np.isfinite(x).all()


X = np.random.default_rng(7).standard_normal((6, 2)).astype(np.float32)
WANT, _ = TINY.run(X[None])

messages = st.one_of(
    st.builds(
        lambda s, v: pb.StreamRequest(steps=pb.Steps(start=s, x=v)),
        st.integers(0, 2**64 - 1),
        st.lists(floats, max_size=9),
    ),
    st.builds(
        lambda m, v, sid: pb.StreamRequest(open=pb.Open(model=m, version=v, session_id=sid)),
        st.text(max_size=5),
        st.text(max_size=3),
        st.text(max_size=5),
    ),
    st.just(pb.StreamRequest()),
)


@given(bad=messages)
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_random_messages_never_change_a_session_they_break(server, bad):
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.PredictorStub(channel)
        s = Duplex(stub)
        sid = s.open(model="tiny").session_id
        s.steps(0, X[:3])
        s.send(bad)
        try:
            answer = s.recv()
        except grpc.RpcError as err:
            assert err.code() in (
                grpc.StatusCode.INVALID_ARGUMENT,
                grpc.StatusCode.FAILED_PRECONDITION,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
            ), err.details()
            next_step = 3
        else:
            assert answer.WhichOneof("kind") == "outputs"  # a valid (re)transmission
            next_step = stub.GetSession(pb.GetSessionRequest(session_id=sid)).next_step
            s.cancel()
        r = Duplex(stub)
        assert r.open(session_id=sid).next_step == next_step
        if next_step == 3:
            np.testing.assert_allclose(outputs_y(r.steps(3, X[3:]), 3), WANT[0, 3:], atol=1e-5)
        r.half_close()


@given(payload=st.binary(max_size=64))
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_random_bytes_as_a_request_are_refused_cleanly(server, payload):
    with grpc.insecure_channel(server.address) as channel:
        raw = channel.stream_stream(
            "/rnnstream.v1.Predictor/Stream",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        try:
            list(raw(iter([payload]), timeout=10))
        except grpc.RpcError as err:
            assert err.code() != grpc.StatusCode.UNAVAILABLE, err.details()


def test_garbage_on_the_port_does_not_hurt_the_server(server):
    host, port = server.address.rsplit(":", 1)
    for junk in (b"GET / HTTP/1.1\r\n\r\n", b"\x00" * 100, bytes(range(256)) * 4):
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(junk)
            sock.settimeout(2)
            with contextlib.suppress(OSError):
                sock.recv(1024)
    with grpc.insecure_channel(server.address) as channel:
        response = pb_grpc.PredictorStub(channel).ListModels(pb.ListModelsRequest(), timeout=10)
    assert {m.name for m in response.models} == {"tiny", "tiny-m2o"}


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def test_10k_sessions_opened_and_closed_keep_memory_flat(server):
    """Open, step and close sessions in a loop: the table and maps return to where they were,
    and the process's memory stops growing after warm-up (bounded, measured)."""
    cycle = [
        pb.StreamRequest(open=pb.Open(model="tiny")),
        pb.StreamRequest(steps=pb.Steps(start=0, x=X[0].tolist())),
        pb.StreamRequest(end=pb.End(close=True)),
    ]
    sessions = server.running.sessions
    table = server.running.repository.get("tiny").table

    async def run(n: int, workers: int = 16) -> None:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.PredictorStub(channel)

            async def worker(count: int) -> None:
                for _ in range(count):
                    kinds = [
                        r.WhichOneof("kind") async for r in stub.Stream(iter(cycle), timeout=10)
                    ]
                    assert kinds == ["opened", "outputs", "final"]

            await asyncio.gather(*(worker(n // workers) for _ in range(workers)))

    asyncio.run(run(1000))  # warm-up: allocator pools, grpc buffers
    held, used, before = len(sessions), table.used, rss_bytes()
    asyncio.run(run(10_000))
    growth = rss_bytes() - before
    assert len(sessions) == held and table.used == used
    assert growth < 16 * 1024 * 1024, f"RSS grew {growth / 1e6:.1f} MB over 10k sessions"
