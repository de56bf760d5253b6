"""End to end through a real HAProxy in front of three real replicas sharing a real Redis
session store, all on 127.0.0.1: SDK sessions made through the proxy live on the replica
their id hashes to; a client that reconnects lands there again; and when a replica stops
(SIGTERM: it drains) or dies (kill -9) its sessions continue exactly on the survivors, from
where it left them or from their last checkpoint, while every other session stays put."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

import rnnstream
from rnnstream.server.repository import ModelRepository
from rnnstream.server.settings import Settings
from rnnstream.v1 import rnnstream_pb2 as pb
from rnnstream.v1 import rnnstream_pb2_grpc as pb_grpc
from tests.conftest import free_port
from tests.deploy.cluster import Replicas, landing, replica_name, running_replicas, write_models
from tests.deploy.haproxy import Haproxy
from tests.service.store.redis_server import RedisServer, running_redis

N_SESSIONS = 30
T = 12  # steps per session
MODEL = replica_name(0)  # every replica serves it: one graph, so sessions can move anywhere
# Short, so a dead replica's sessions move soon; not shorter, so a replica starved of CPU on
# a busy machine still renews its leases in time (every third of the TTL).
LEASE_TTL_S = 2.0
SNAPSHOT_INTERVAL_S = 0.2

Reference = Callable[[np.ndarray], np.ndarray]

redis_server = pytest.fixture(scope="module", name="redis_server")(running_redis)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_models(tmp_path_factory.mktemp("replica-models"), 3)


@pytest.fixture(scope="module")
def want(models: Path) -> Iterator[Reference]:
    """The outputs of an uninterrupted run of ``x [T, F]``, in-process, step by step, from the
    graph the replicas serve (the servers' arithmetic, so results compare exactly)."""
    repository = ModelRepository.load(Settings.from_env({}, models=models, state_dir=""))
    loaded = repository.get(MODEL, "")

    def run(x: np.ndarray) -> np.ndarray:
        state = loaded.table.initial[None].copy()
        ys = []
        for t in range(len(x)):
            y, state = loaded.graph.run(x[t : t + 1], state)
            ys.append(y[0])
        return np.stack(ys)

    yield run
    repository.close()


@dataclass
class Cluster:
    """Three replicas on one Redis store, and HAProxy in front of them."""

    replicas: Replicas
    proxy: Haproxy


@pytest.fixture
def cluster(models: Path, redis_server: RedisServer, tmp_path: Path) -> Iterator[Cluster]:
    """Three fresh replicas on an emptied store, HAProxy in front; all stopped at the end."""
    redis_server.flush()
    extra = ("--lease-ttl-s", str(LEASE_TTL_S), "--snapshot-interval-s", str(SNAPSHOT_INTERVAL_S))
    with running_replicas(models, 3, store=redis_server.url, extra=extra) as replicas:
        proxy = Haproxy(replicas.addresses, f"127.0.0.1:{free_port()}", tmp_path)
        try:
            yield Cluster(replicas, proxy)
        finally:
            proxy.stop()
            # Shown only when the test failed: what HAProxy and each replica last said.
            print("haproxy:", *proxy.lines[-40:], sep="\n")
            for i, log in enumerate(replicas.logs):
                print(f"{replica_name(i)}:\n" + "".join(log[-40:]))


def sequence(i: int) -> np.ndarray:
    """``T`` steps of input for session ``i``."""
    return np.random.default_rng(i).standard_normal((T, 2)).astype(np.float32)


def held(replicas: Replicas, session_ids: Sequence[str]) -> dict[str, tuple[int, pb.SessionInfo]]:
    """Which live replica holds each session, and what it says of it: GetSession asked of
    every live replica directly (a replica answers only for sessions it holds)."""
    found: dict[str, list[tuple[int, pb.SessionInfo]]] = {sid: [] for sid in session_ids}
    for i in replicas.live():
        with grpc.insecure_channel(replicas.addresses[i]) as channel:
            stub = pb_grpc.PredictorStub(channel)
            for sid in session_ids:
                try:
                    info = stub.GetSession(pb.GetSessionRequest(session_id=sid), timeout=10)
                except grpc.RpcError as err:
                    assert err.code() == grpc.StatusCode.NOT_FOUND, err
                    continue
                found[sid].append((i, info))
    for sid, holders in found.items():
        assert len(holders) == 1, f"session {sid} is held by replicas {[i for i, _ in holders]}"
    return {sid: holders[0] for sid, holders in found.items()}


def where(replicas: Replicas, session_ids: Sequence[str]) -> dict[str, int]:
    """The replica holding each session."""
    return {sid: i for sid, (i, _) in held(replicas, session_ids).items()}


def routed(proxy: Haproxy, session_ids: Sequence[str]) -> dict[str, int]:
    """The replica HAProxy sends each session's calls to now."""
    return {
        sid: int(name.removeprefix("replica-"))
        for sid, name in landing(proxy.address, session_ids).items()
    }


def test_a_reconnect_lands_on_the_holder_and_a_stopped_replicas_sessions_continue_on_survivors(
    cluster: Cluster, want: Reference
) -> None:
    replicas, proxy = cluster.replicas, cluster.proxy
    xs = [sequence(i) for i in range(N_SESSIONS)]
    ys: list[list[np.ndarray]] = [[] for _ in xs]

    # New sessions through the proxy: each is made on the replica its id hashes to.
    with rnnstream.Client(proxy.address) as client:
        sessions = [client.session(MODEL) for _ in xs]
        for session, x, y in zip(sessions, xs, ys, strict=True):
            y.append(session.steps(x[:4]))
            session.close()
    ids = [session.id for session in sessions]
    home = where(replicas, ids)
    assert home == routed(proxy, ids)
    assert set(home.values()) == {0, 1, 2}

    # A client that reconnects (a new channel, new streams, the same ids) lands on the
    # replica holding each session and continues it there.
    with rnnstream.Client(proxy.address) as client:
        sessions = [client.session(session_id=sid) for sid in ids]
        for session, x, y in zip(sessions, xs, ys, strict=True):
            assert session.next_step == 4
            y.append(session.steps(x[4:8]))
        assert where(replicas, ids) == home

        # Replica 0 drains while its sessions' streams are open: it checkpoints them to the
        # store and releases them; HAProxy takes it out of the ring.
        assert replicas.stop(0) == 0
        proxy.wait_for_line(r"Server rnnstream/rnnstream-0 is DOWN")
        for session, x, y in zip(sessions, xs, ys, strict=True):
            y.append(session.steps(x[8:]))  # replica 0's sessions reconnect through the proxy
        after = held(replicas, ids)
        for session in sessions:
            session.close()

    moved = {sid for sid in ids if home[sid] == 0}
    assert moved
    for sid, session in zip(ids, sessions, strict=True):
        replica, info = after[sid]
        if sid in moved:
            assert replica in (1, 2)
            assert info.restored_step == 8  # from the checkpoint written at the drain
            assert session.reconnects == 1
        else:
            assert replica == home[sid]  # never moved, and its stream was never cut
            assert not info.HasField("restored_step")
            assert session.reconnects == 0
    assert {sid: replica for sid, (replica, _) in after.items()} == routed(proxy, ids)
    for x, y in zip(xs, ys, strict=True):
        np.testing.assert_array_equal(np.concatenate(y), want(x))


def test_a_killed_replicas_sessions_resume_on_survivors_from_their_last_checkpoint(
    cluster: Cluster, want: Reference
) -> None:
    replicas, proxy = cluster.replicas, cluster.proxy
    xs = [sequence(100 + i) for i in range(N_SESSIONS)]
    ys: list[list[np.ndarray]] = [[] for _ in xs]

    with rnnstream.Client(proxy.address) as client:
        sessions = [client.session(MODEL) for _ in xs]
        for session, x, y in zip(sessions, xs, ys, strict=True):
            y.append(session.steps(x[:6]))
        ids = [session.id for session in sessions]
        home = where(replicas, ids)
        assert set(home.values()) == {0, 1, 2}
        time.sleep(SNAPSHOT_INTERVAL_S * 4)  # checkpoints: steps 0..5 are in the store
        # Replica 0's sessions step last, right before the kill: their newest steps are
        # most likely not checkpointed yet, and have to be resent from durable_step.
        order = sorted(range(len(xs)), key=lambda k: home[ids[k]] == 0)
        for k in order:
            ys[k].append(sessions[k].steps(xs[k][6:9]))
        assert replicas.kill(0) == -9
        proxy.wait_for_line(r"Server rnnstream/rnnstream-0 is DOWN")
        # Once the lease of the dead replica expires, its sessions move on their next call.
        for session, x, y in zip(sessions, xs, ys, strict=True):
            y.append(session.steps(x[9:]))
        after = held(replicas, ids)
        for session in sessions:
            session.close()

    moved = {sid for sid in ids if home[sid] == 0}
    assert moved
    for sid, session in zip(ids, sessions, strict=True):
        replica, info = after[sid]
        if sid in moved:
            assert replica in (1, 2)
            assert 6 <= info.restored_step <= 9
            assert session.reconnects >= 1
        else:
            assert replica == home[sid]
            assert not info.HasField("restored_step")
            assert session.reconnects == 0
    assert {sid: replica for sid, (replica, _) in after.items()} == routed(proxy, ids)
    for x, y in zip(xs, ys, strict=True):
        np.testing.assert_array_equal(np.concatenate(y), want(x))
