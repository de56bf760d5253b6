"""Session semantics over a real server: resume, retransmit, gaps, supersede, delete, reset."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest

from rnnstream.v1 import rnnstream_pb2 as pb
from rnnstream.v1 import rnnstream_pb2_grpc as pb_grpc
from tests.conftest import TINY
from tests.service.duplex import Duplex, outputs_y


@pytest.fixture
def stub(server):
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.PredictorStub(channel)


def sequence(seed: int, t: int = 12) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((t, 2)).astype(np.float32)


def test_resume_after_cancelled_stream_continues_state(stub):
    x = sequence(10)
    want, _ = TINY.run(x[None])
    a = Duplex(stub)
    sid = a.open(model="tiny").session_id
    first = outputs_y(a.steps(0, x[:5]), 3)
    a.cancel()
    b = Duplex(stub)
    opened = b.open(session_id=sid)
    assert opened.session_id == sid and opened.next_step == 5
    rest = outputs_y(b.steps(5, x[5:]), 3)
    np.testing.assert_allclose(np.concatenate([first, rest]), want[0], atol=1e-5)
    b.half_close()


def test_retransmitted_steps_are_not_applied_twice(stub):
    x = sequence(11)
    want, _ = TINY.run(x[None])
    s = Duplex(stub)
    sid = s.open(model="tiny").session_id
    s.steps(0, x[:5])
    again = s.steps(3, x[3:8])  # 3, 4 retransmitted; 5, 6, 7 new
    assert again.start == 3
    np.testing.assert_allclose(outputs_y(again, 3), want[0, 3:8], atol=1e-5)
    only_old = s.steps(0, x[:8])  # everything already applied
    np.testing.assert_allclose(outputs_y(only_old, 3), want[0, :8], atol=1e-5)
    assert stub.GetSession(pb.GetSessionRequest(session_id=sid)).next_step == 8
    np.testing.assert_allclose(outputs_y(s.steps(8, x[8:]), 3), want[0, 8:], atol=1e-5)
    s.half_close()


def test_gap_is_refused_and_changes_nothing(stub):
    x = sequence(12)
    want, _ = TINY.run(x[None])
    s = Duplex(stub)
    sid = s.open(model="tiny").session_id
    s.steps(0, x[:4])
    s.send(pb.StreamRequest(steps=pb.Steps(start=6, x=x[6].tolist())))
    with pytest.raises(grpc.RpcError) as err:
        s.recv()
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "resend from step 4" in err.value.details()
    r = Duplex(stub)
    assert r.open(session_id=sid).next_step == 4
    np.testing.assert_allclose(outputs_y(r.steps(4, x[4:]), 3), want[0, 4:], atol=1e-5)
    r.half_close()


def test_resume_takes_over_a_live_stream(stub):
    a = Duplex(stub)
    sid = a.open(model="tiny").session_id
    b = Duplex(stub)
    b.open(session_id=sid)
    ended = a.recv()
    assert ended.WhichOneof("kind") == "ended"
    assert ended.ended.reason == pb.END_REASON_SUPERSEDED and ended.ended.session_id == sid
    assert list(a.call) == []  # the old stream closes cleanly after telling why
    assert a.call.code() == grpc.StatusCode.OK
    b.steps(0, sequence(1, 2))
    b.half_close()


def test_delete_session_ends_its_live_stream(stub):
    a = Duplex(stub)
    sid = a.open(model="tiny").session_id
    assert stub.DeleteSession(pb.DeleteSessionRequest(session_id=sid)).deleted
    ended = a.recv()
    assert ended.ended.reason == pb.END_REASON_DELETED
    with pytest.raises(grpc.RpcError) as err:
        stub.GetSession(pb.GetSessionRequest(session_id=sid))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_end_reset_starts_next_sequence_from_initial_state(stub):
    x1, x2 = sequence(20, 4), sequence(21, 6)
    s = Duplex(stub)
    s.open(model="tiny")
    s.steps(0, x1)
    final = s.end(reset=True)
    assert final.steps == 4 and final.next_step == 4
    want2, _ = TINY.run(x2[None])
    out = s.steps(4, x2)
    assert out.start == 4  # step numbering is session-wide
    np.testing.assert_allclose(outputs_y(out, 3), want2[0], atol=1e-5)


def test_end_without_reset_continues_state(stub):
    x = sequence(22, 8)
    want, _ = TINY.run(x[None])
    s = Duplex(stub)
    s.open(model="tiny")
    s.steps(0, x[:3])
    final = s.end(reset=False)
    np.testing.assert_allclose(final.y, want[0, 2], atol=1e-5)
    np.testing.assert_allclose(outputs_y(s.steps(3, x[3:]), 3), want[0, 3:], atol=1e-5)


def test_end_close_frees_the_session(stub):
    s = Duplex(stub)
    sid = s.open(model="tiny").session_id
    s.steps(0, sequence(23, 2))
    s.end(close=True)
    assert list(s.call) == []
    with pytest.raises(grpc.RpcError) as err:
        stub.GetSession(pb.GetSessionRequest(session_id=sid))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_get_session_reports_where_it_stands(stub):
    s = Duplex(stub)
    sid = s.open(model="tiny").session_id
    s.steps(0, sequence(24, 3))
    info = stub.GetSession(pb.GetSessionRequest(session_id=sid))
    assert (info.session_id, info.next_step, info.model, info.version) == (sid, 3, "tiny", "1")
    assert info.live and info.sequence_steps == 3 and info.age_s >= info.idle_s >= 0
    s.half_close()
    assert not stub.GetSession(pb.GetSessionRequest(session_id=sid)).live


def test_half_close_many_to_many_sends_final(stub):
    s = Duplex(stub)
    s.open(model="tiny")
    s.steps(0, sequence(25, 3))
    rest = s.half_close()
    assert [r.WhichOneof("kind") for r in rest] == ["final"]
    assert rest[0].final.steps == 3


def test_open_mode_defaults_to_the_models(stub):
    assert Duplex(stub).open(model="tiny").return_sequences is True
    assert Duplex(stub).open(model="tiny-m2o").return_sequences is False
    assert Duplex(stub).open(model="tiny", return_sequences=False).return_sequences is False


def test_streams_cancelled_at_any_moment_leave_no_live_session(server, stub):
    """However a stream ends (here: cancelled right after Open, or mid-step), its session is
    detached: it is idle, resumable, and counts against no stream limit."""
    for i in range(30):
        s = Duplex(stub)
        s.send(pb.StreamRequest(open=pb.Open(model="tiny")))
        if i % 2:
            s.recv()
            s.send(pb.StreamRequest(steps=pb.Steps(start=0, x=[0.1, 0.2])))
        s.cancel()
    sessions = server.running.sessions
    deadline = time.monotonic() + 10
    while sessions.live_streams and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sessions.live_streams == 0
    assert not any(s.live for s in sessions)


def test_create_with_a_client_id_creates_then_resumes(stub):
    x = sequence(20)
    want, _ = TINY.run(x[None])
    sid = "e2e-created-session-0123456789"
    a = Duplex(stub)
    opened = a.open(model="tiny", session_id=sid, create=True)
    assert opened.session_id == sid and opened.next_step == 0
    first = outputs_y(a.steps(0, x[:4]), 3)
    a.cancel()
    b = Duplex(stub)
    again = b.open(model="tiny", session_id=sid, create=True)  # a retried create: resumes
    assert again.session_id == sid and again.next_step == 4
    rest = outputs_y(b.steps(4, x[4:]), 3)
    np.testing.assert_allclose(np.concatenate([first, rest]), want[0], atol=1e-5)
    b.half_close()


def test_a_create_for_another_model_changes_nothing(stub):
    sid = "e2e-other-model-0123456789"
    a = Duplex(stub)
    a.open(model="tiny", session_id=sid, create=True)
    a.steps(0, sequence(21, 2))
    with pytest.raises(grpc.RpcError) as err:
        Duplex(stub).open(model="tiny-m2o", session_id=sid, create=True)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert stub.GetSession(pb.GetSessionRequest(session_id=sid)).next_step == 2
    a.half_close()
