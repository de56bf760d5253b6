"""End to end through a real HAProxy and real replicas on 127.0.0.1: calls about a session
(the x-rnnstream-session header) always land on one replica, keys spread over all of them,
streams pass through, and when a replica goes away only its keys move."""

from __future__ import annotations

import queue
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import grpc
import numpy as np
import pytest

from rnnstream.v1 import rnnstream_pb2 as pb
from rnnstream.v1 import rnnstream_pb2_grpc as pb_grpc
from tests.conftest import TINY, free_port
from tests.deploy.cluster import (
    Replicas,
    landing,
    replica_name,
    running_replicas,
    session_metadata,
    write_models,
)
from tests.deploy.haproxy import Haproxy

KEYS = [f"session-{i}" for i in range(40)]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_models(tmp_path_factory.mktemp("replica-models"), 3)


@pytest.fixture(scope="module")
def two(
    models: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Replicas, Haproxy]]:
    """Two replicas behind HAProxy."""
    with running_replicas(models, 2) as replicas:
        proxy = Haproxy(
            replicas.addresses, f"127.0.0.1:{free_port()}", tmp_path_factory.mktemp("haproxy")
        )
        try:
            yield replicas, proxy
        finally:
            proxy.stop()


def test_a_key_always_lands_on_the_same_replica(two):
    _, proxy = two
    first = landing(proxy.address, KEYS)
    # Again on new connections, keys in reverse order: routing is by key, not by connection.
    again = landing(proxy.address, KEYS[::-1])
    assert again == first


def test_keys_spread_over_both_replicas(two):
    _, proxy = two
    counts = Counter(landing(proxy.address, KEYS).values())
    assert set(counts) == {replica_name(0), replica_name(1)}
    assert min(counts.values()) >= len(KEYS) // 5, counts


class Stream:
    """One Predictor.Stream through the proxy with a session header, driven in lock step."""

    def __init__(self, stub: pb_grpc.PredictorStub, key: str) -> None:
        self._requests: queue.Queue[pb.StreamRequest | None] = queue.Queue()
        self.call = stub.Stream(
            iter(self._requests.get, None), metadata=session_metadata(key), timeout=30
        )

    def ask(self, request: pb.StreamRequest) -> pb.StreamResponse:
        self._requests.put(request)
        return next(cast(Iterator[pb.StreamResponse], self.call))

    def cancel(self) -> None:
        self.call.cancel()
        self._requests.put(None)


def test_a_stream_passes_through_and_its_session_lives_where_its_key_lands(two):
    replicas, proxy = two
    key = "stream-key"
    home = int(landing(proxy.address, [key])[key].removeprefix("replica-"))
    x = np.random.default_rng(0).standard_normal((1, 503, 2)).astype(np.float32)
    want, _ = TINY.run(x)
    with grpc.insecure_channel(proxy.address) as channel:
        stream = Stream(pb_grpc.PredictorStub(channel), key)
        opened = stream.ask(pb.StreamRequest(open=pb.Open(model=replica_name(home)))).opened
        sid = opened.session_id
        assert sid
        big = stream.ask(pb.StreamRequest(steps=pb.Steps(start=0, x=x[0, :500].ravel())))
        np.testing.assert_allclose(
            np.array(big.outputs.y).reshape(500, 3), want[0, :500], rtol=1e-4, atol=1e-5
        )
        stream.cancel()  # the connection drops mid-session

    # The session is on the replica the key lands on, and only there.
    for i, address in enumerate(replicas.addresses):
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.PredictorStub(channel)
            if i == home:
                assert (
                    stub.GetSession(pb.GetSessionRequest(session_id=sid), timeout=10).next_step
                    == 500
                )
            else:
                with pytest.raises(grpc.RpcError) as missing:
                    stub.GetSession(pb.GetSessionRequest(session_id=sid), timeout=10)
                assert missing.value.code() == grpc.StatusCode.NOT_FOUND

    # Resume through the proxy on a new connection: same replica, same state.
    with grpc.insecure_channel(proxy.address) as channel:
        stub = pb_grpc.PredictorStub(channel)
        info = stub.GetSession(
            pb.GetSessionRequest(session_id=sid), metadata=session_metadata(key), timeout=10
        )
        assert info.next_step == 500
        stream = Stream(stub, key)
        resumed = stream.ask(pb.StreamRequest(open=pb.Open(session_id=sid))).opened
        assert resumed.next_step == 500
        rest = stream.ask(pb.StreamRequest(steps=pb.Steps(start=500, x=x[0, 500:].ravel())))
        np.testing.assert_allclose(
            np.array(rest.outputs.y).reshape(3, 3), want[0, 500:], rtol=1e-4, atol=1e-5
        )
        final = stream.ask(pb.StreamRequest(end=pb.End(close=True))).final
        assert final.next_step == 503
        stream.cancel()


def test_when_a_replica_goes_only_its_keys_move(models, tmp_path):
    with running_replicas(models, 3) as replicas:
        proxy = Haproxy(replicas.addresses, f"127.0.0.1:{free_port()}", tmp_path)
        try:
            before = landing(proxy.address, KEYS)
            assert set(before.values()) == {replica_name(i) for i in range(3)}
            assert replicas.stop(0) == 0
            proxy.wait_for_line(r"Server rnnstream/rnnstream-0 is DOWN")
            after = landing(proxy.address, KEYS)
        finally:
            proxy.stop()
    moved = {k for k in KEYS if after[k] != before[k]}
    assert moved == {k for k in KEYS if before[k] == replica_name(0)}
    assert replica_name(0) not in after.values()
    # The keys that moved spread over the survivors rather than piling on one of them.
    assert {after[k] for k in moved} == {replica_name(1), replica_name(2)}
