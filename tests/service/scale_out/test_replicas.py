"""Sessions that move between server processes sharing a Redis session store."""

from __future__ import annotations

import contextlib
import signal
import time

import grpc
import numpy as np
import pytest

from rnnstream.server.snapshot import SessionRecord
from rnnstream.server.store.entry import GraphIdentity, StoredSession, encode_entry
from rnnstream.server.store.redis_store import PREFIX
from rnnstream.v1 import rnnstream_pb2 as pb
from rnnstream.v1 import rnnstream_pb2_grpc as pb_grpc
from tests.service.duplex import Duplex, outputs_y
from tests.service.scale_out.conftest import LEASE_TTL_S, Reference, Start

C = grpc.StatusCode
T = 12


def sequence(seed: int) -> np.ndarray:
    """``T`` steps of input for session ``seed``."""
    return np.random.default_rng(seed).standard_normal((T, 2)).astype(np.float32)


def sid(i: int) -> str:
    return f"scale-out-session-{i:08d}"


def test_sessions_resumed_on_another_live_replica_continue_exactly(
    want: Reference, start_replica: Start
):
    _, a_address = start_replica()
    _, b_address = start_replica()
    n = 50
    with grpc.insecure_channel(a_address) as a, grpc.insecure_channel(b_address) as b:
        on_a = [Duplex(pb_grpc.PredictorStub(a)) for _ in range(n)]
        first = []
        for i, stream in enumerate(on_a):
            opened = stream.open(model="tiny", session_id=sid(i), create=True)
            assert opened.next_step == 0 and opened.HasField("durable_step")
            first.append(outputs_y(stream.steps(0, sequence(i)[:5]), 3))
        for i, stream in enumerate(on_a):
            moved = Duplex(pb_grpc.PredictorStub(b))
            opened = moved.open(session_id=sid(i), create=True)
            assert opened.next_step == 5 and opened.durable_step == 5
            ended = stream.recv()
            assert ended.WhichOneof("kind") == "ended", ended
            assert ended.ended.reason == pb.END_REASON_SUPERSEDED
            assert "moved to another server process" in ended.ended.message
            rest = outputs_y(moved.steps(5, sequence(i)[5:]), 3)
            np.testing.assert_array_equal(np.concatenate([first[i], rest]), want(sequence(i)))
            moved.half_close()


def test_a_killed_replica_sessions_resume_from_their_last_checkpoint(
    want: Reference, start_replica: Start
):
    a_proc, a_address = start_replica("--snapshot-interval-s", "0.2")
    _, b_address = start_replica()
    n = 10
    seen: dict[int, int] = {}
    got: dict[int, np.ndarray] = {}
    with grpc.insecure_channel(a_address) as a:
        streams = [Duplex(pb_grpc.PredictorStub(a)) for _ in range(n)]
        for i, stream in enumerate(streams):
            stream.open(model="tiny", session_id=sid(100 + i), create=True)
            got[i] = outputs_y(stream.steps(0, sequence(i)[:4]), 3)
        time.sleep(1.0)  # several checkpoint intervals
        for i, stream in enumerate(streams):
            final = stream.end()  # the Final answer carries durable_step
            seen[i] = final.durable_step
            assert seen[i] == 4
        a_proc.kill()
        a_proc.wait(timeout=30)
    with grpc.insecure_channel(b_address) as b:
        for i in range(n):
            stream = Duplex(pb_grpc.PredictorStub(b))
            opened = stream.open(session_id=sid(100 + i), create=True)
            assert opened.next_step == seen[i] == opened.durable_step == opened.restored_step
            rest = outputs_y(stream.steps(opened.next_step, sequence(i)[opened.next_step :]), 3)
            y = np.concatenate([got[i][: opened.next_step], rest])
            np.testing.assert_array_equal(y, want(sequence(i)))  # zero differences
            stream.half_close()


def test_steps_after_the_last_checkpoint_are_resent_from_durable_step(
    want: Reference, start_replica: Start
):
    a_proc, a_address = start_replica("--snapshot-interval-s", "0.2")
    _, b_address = start_replica()
    x = sequence(7)
    with grpc.insecure_channel(a_address) as a:
        stream = Duplex(pb_grpc.PredictorStub(a))
        stream.open(model="tiny", session_id=sid(200), create=True)
        first = outputs_y(stream.steps(0, x[:3]), 3)
        time.sleep(1.0)
        later = stream.steps(3, x[3:6])  # Outputs say the checkpoint moved on
        assert later.HasField("durable_step") and later.durable_step >= 3
        a_proc.kill()
        a_proc.wait(timeout=30)
    with grpc.insecure_channel(b_address) as b:
        stream = Duplex(pb_grpc.PredictorStub(b))
        opened = stream.open(session_id=sid(200), create=True)
        assert later.durable_step <= opened.next_step <= 6
        assert opened.durable_step == opened.next_step
        rest = outputs_y(stream.steps(opened.next_step, x[opened.next_step :]), 3)
        head = np.concatenate([first, outputs_y(later, 3)])[: opened.next_step]
        np.testing.assert_array_equal(np.concatenate([head, rest]), want(x))
        stream.half_close()


def test_a_paused_owner_never_applies_another_step(want: Reference, start_replica: Start):
    a_proc, a_address = start_replica()
    _, b_address = start_replica()
    x = sequence(3)
    with grpc.insecure_channel(a_address) as a, grpc.insecure_channel(b_address) as b:
        old = Duplex(pb_grpc.PredictorStub(a))
        old.open(model="tiny", session_id=sid(300), create=True)
        old.steps(0, x[:4])
        a_proc.send_signal(signal.SIGSTOP)
        try:
            time.sleep(LEASE_TTL_S * 1.5)
            new = Duplex(pb_grpc.PredictorStub(b))
            opened = new.open(session_id=sid(300), create=True)  # A does not answer: expires
            assert opened.next_step == 0  # A never checkpointed: B starts from the entry
        finally:
            a_proc.send_signal(signal.SIGCONT)
        # A resumes: its stream must not step the session any more.
        old.send(pb.StreamRequest(steps=pb.Steps(start=4, x=x[4:6].ravel().tolist())))
        answers: list[pb.StreamResponse] = []
        with contextlib.suppress(grpc.RpcError):
            answers.extend(old.call)
        old.cancel()
        if old.call.code() != C.OK:
            assert old.call.code() == C.UNAVAILABLE
            assert "moved to another server process" in (old.call.details() or "")
        assert [a.WhichOneof("kind") for a in answers] in ([], ["ended"])
        out = outputs_y(new.steps(0, x), 3)
        np.testing.assert_array_equal(out, want(x))
        new.half_close()


def test_redis_down_refuses_moves_keeps_owned_sessions_for_a_lease_then_recovers(
    want: Reference, start_replica: Start, redis_server
):
    _, a_address = start_replica()
    _, b_address = start_replica()
    x = sequence(4)
    with grpc.insecure_channel(a_address) as a, grpc.insecure_channel(b_address) as b:
        owned = Duplex(pb_grpc.PredictorStub(a))
        owned.open(model="tiny", session_id=sid(400), create=True)
        first = outputs_y(owned.steps(0, x[:2]), 3)
        redis_server.stop()
        try:
            with pytest.raises(grpc.RpcError) as err:
                Duplex(pb_grpc.PredictorStub(b)).open(session_id=sid(400), create=True)
            assert err.value.code() == C.UNAVAILABLE
            assert "session store cannot be reached" in (err.value.details() or "")
            # Within its lease the owner keeps serving (renewal fails, but the lease lasts).
            second = outputs_y(owned.steps(2, x[2:3]), 3)
            np.testing.assert_array_equal(np.concatenate([first, second]), want(x)[:3])
            time.sleep(LEASE_TTL_S * 1.2)
            # Past its lease deadline it cannot renew: it stops applying steps.
            with pytest.raises(grpc.RpcError) as err:
                owned.steps(3, x[3:4])
            assert err.value.code() == C.UNAVAILABLE
        finally:
            redis_server.start()
        # Redis is back (empty: it keeps nothing): new sessions are made and move again.
        # The first calls on connections Redis closed may fail: a client retries UNAVAILABLE.
        fresh = open_retrying(pb_grpc.PredictorStub(a), sid(401), 0)
        y1 = outputs_y(fresh.steps(0, x[:5]), 3)
        moved = open_retrying(pb_grpc.PredictorStub(b), sid(401), 5)
        y2 = outputs_y(moved.steps(5, x[5:]), 3)
        np.testing.assert_array_equal(np.concatenate([y1, y2]), want(x))
        moved.half_close()


def open_retrying(stub: pb_grpc.PredictorStub, session_id: str, next_step: int) -> Duplex:
    """Create or resume the session, retrying UNAVAILABLE for a while after the store came
    back: stale connections fail once, and an owner listens for hand-over requests again
    only a moment later (a request before is lost)."""
    deadline = time.monotonic() + 20
    while True:
        stream = Duplex(stub)
        try:
            opened = stream.open(model="tiny", session_id=session_id, create=True)
        except grpc.RpcError as err:
            if err.code() != C.UNAVAILABLE or time.monotonic() > deadline:
                raise
            continue
        assert opened.next_step == next_step
        return stream


def _entry(session_id: str, sha256: str) -> bytes:
    record = SessionRecord(
        session_id=session_id,
        state=np.zeros(5, np.float32),
        next_step=3,
        sequence_steps=3,
        return_sequences=True,
        return_state=False,
        idle_ttl_s=600.0,
        age_s=1.0,
        replay_start=3,
        replay_y=None,
        replay_states=None,
    )
    graph = GraphIdentity("tiny", "1", sha256, n_outputs=3, state_size=5)
    return encode_entry(StoredSession(record, graph), time.time())


def test_entries_of_another_graph_or_corrupt_are_refused_with_the_reason(
    want: Reference, start_replica: Start, redis_server
):
    import redis

    _, address = start_replica()
    foreign, corrupt = sid(500), sid(501)
    good = _entry(foreign, "00" * 32)
    with redis.Redis(port=redis_server.port) as client:
        client.set(PREFIX + "session:" + foreign, good)
        client.set(PREFIX + "session:" + corrupt, good[:-1] + bytes([good[-1] ^ 1]))
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.PredictorStub(channel)
        fine = Duplex(stub)
        fine.open(model="tiny", session_id=sid(502), create=True)
        for session_id, reason in ((foreign, "another graph"), (corrupt, "checksum")):
            with pytest.raises(grpc.RpcError) as err:
                Duplex(stub).open(session_id=session_id, create=True)
            assert err.value.code() == C.NOT_FOUND
            assert reason in (err.value.details() or "")
        x = sequence(5)
        np.testing.assert_array_equal(outputs_y(fine.steps(0, x), 3), want(x))
        fine.half_close()


def test_a_session_under_a_server_made_id_steps_and_moves(
    want: Reference, start_replica: Start
) -> None:
    _, a_address = start_replica()
    _, b_address = start_replica()
    x = sequence(8)
    with grpc.insecure_channel(a_address) as a, grpc.insecure_channel(b_address) as b:
        first = Duplex(pb_grpc.PredictorStub(a))
        opened = first.open(model="tiny")
        assert opened.durable_step == 0
        y1 = outputs_y(first.steps(0, x[:6]), 3)
        moved = Duplex(pb_grpc.PredictorStub(b))
        assert moved.open(session_id=opened.session_id).next_step == 6  # resume, no create
        y2 = outputs_y(moved.steps(6, x[6:]), 3)
        np.testing.assert_array_equal(np.concatenate([y1, y2]), want(x))
        moved.half_close()


def test_delete_on_another_replica_ends_the_session_everywhere(start_replica: Start) -> None:
    _, a_address = start_replica()
    _, b_address = start_replica()
    with grpc.insecure_channel(a_address) as a, grpc.insecure_channel(b_address) as b:
        live = Duplex(pb_grpc.PredictorStub(a))
        live.open(model="tiny", session_id=sid(600), create=True)
        live.steps(0, sequence(9)[:2])
        stub_b = pb_grpc.PredictorStub(b)
        assert stub_b.DeleteSession(pb.DeleteSessionRequest(session_id=sid(600))).deleted
        ended = live.recv()  # moved to B, then deleted there
        assert ended.WhichOneof("kind") == "ended", ended
        for stub in (pb_grpc.PredictorStub(a), stub_b):
            with pytest.raises(grpc.RpcError) as err:
                Duplex(stub).open(session_id=sid(600))
            assert err.value.code() == C.NOT_FOUND
