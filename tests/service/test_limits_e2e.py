"""Lifecycle and limits over a real server: per-session TTL, stream and size limits, metrics."""

from __future__ import annotations

import time
import urllib.request

import grpc
import numpy as np
import pytest

from rnnstream.server.server import BackgroundServer
from rnnstream.server.settings import Settings
from rnnstream.v1 import rnnstream_pb2 as pb
from rnnstream.v1 import rnnstream_pb2_grpc as pb_grpc
from tests.conftest import free_port
from tests.service.duplex import Duplex


@pytest.fixture(scope="module")
def limited(tiny_models):
    settings = Settings.from_env(
        {},
        models=tiny_models,
        host="127.0.0.1",
        port=0,
        default_model="tiny",
        state_dir="",
        max_streams=3,
        max_steps_per_message=50,
        max_message_bytes=4096,
        max_idle_ttl_s=60.0,
        idle_ttl_s=30.0,
        metrics_port=free_port(),
    )
    with BackgroundServer(settings) as server:
        yield server


@pytest.fixture
def stub(limited):
    with grpc.insecure_channel(limited.address) as channel:
        yield pb_grpc.PredictorStub(channel)


def test_client_chosen_idle_ttl_expires_the_session(stub):
    s = Duplex(stub)
    opened = s.open(model="tiny", idle_ttl_s=0.3)
    assert opened.idle_ttl_s == pytest.approx(0.3)
    s.half_close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            stub.GetSession(pb.GetSessionRequest(session_id=opened.session_id))
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.NOT_FOUND
            break
        time.sleep(0.2)
    else:
        pytest.fail("session did not expire")


def test_idle_ttl_above_the_maximum_is_refused(stub):
    with pytest.raises(grpc.RpcError) as err:
        Duplex(stub).open(model="tiny", idle_ttl_s=3600)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "up to 60s" in err.value.details()


def test_live_streams_are_limited(stub):
    streams = [Duplex(stub) for _ in range(3)]
    for s in streams:
        s.open(model="tiny")
    with pytest.raises(grpc.RpcError) as err:
        Duplex(stub).open(model="tiny")
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "--max-streams" in err.value.details()
    streams[0].half_close()
    Duplex(stub).open(model="tiny")  # room again
    for s in streams[1:]:
        s.half_close()


def test_too_many_steps_in_one_message(stub):
    s = Duplex(stub)
    s.open(model="tiny")
    s.send(pb.StreamRequest(steps=pb.Steps(start=0, x=[0.0] * 102)))
    with pytest.raises(grpc.RpcError) as err:
        s.recv()
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "limit is 50 per message" in err.value.details()


def test_oversized_message_is_resource_exhausted(stub):
    with pytest.raises(grpc.RpcError) as err:
        stub.Predict(pb.PredictRequest(model="tiny", x=[0.0] * 2000, n_sequences=1), timeout=30)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_metrics_endpoint(limited, stub):
    s = Duplex(stub)
    s.open(model="tiny")
    s.steps(0, np.zeros((4, 2), np.float32))
    with pytest.raises(grpc.RpcError):
        stub.GetSession(pb.GetSessionRequest(session_id="nope-0123456789abcdef"))
    port = limited.running.settings.metrics_port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        body = response.read().decode()
    s.half_close()
    assert 'rnnstream_sessions{state="live"}' in body
    assert 'rnnstream_errors_total{code="NOT_FOUND"}' in body
    assert 'rnnstream_steps_total{model="tiny/1"}' in body
    assert "rnnstream_step_latency_seconds_bucket" in body
    assert "rnnstream_batch_size_count" in body
    assert 'rnnstream_sessions_ended_total{reason="idle_ttl"}' in body
