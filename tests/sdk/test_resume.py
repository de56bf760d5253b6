"""Dropped streams: the session reconnects, resends, and nothing is lost or applied twice.

A drop is simulated by cancelling the real gRPC call underneath the SDK (what a reset
connection looks like to it), at chosen moments: between calls, or after the server has
applied steps whose outputs the client has not read yet.
"""

from __future__ import annotations

import socket
import time

import grpc
import numpy as np
import pytest

import rnnstream
from rnnstream.client import _Stream
from tests.sdk.conftest import rand, reference, server_next_step

ATOL = 1e-5


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.005)


def drop_on_first(monkeypatch, kind: str, before=None) -> dict[str, int]:
    """Cancel the stream instead of delivering the first response of ``kind``."""
    original = _Stream.recv
    seen = {"dropped": 0}

    def recv(self, timeout):
        response = original(self, timeout)
        if not seen["dropped"] and response is not None and response.WhichOneof("kind") == kind:
            seen["dropped"] += 1
            if before is not None:
                before()
            self.call.cancel()  # this answer, and any behind it, are lost with the connection
            raise rnnstream.RnnstreamError("test: connection reset", grpc.StatusCode.CANCELLED)
        return response

    monkeypatch.setattr(_Stream, "recv", recv)
    return seen


def test_drop_between_calls_resumes(client, server):
    x = rand(10, 20)
    with client.session("tiny") as s:
        first = s.steps(x[:10])
        s._stream.call.cancel()
        rest = s.steps(x[10:])
        assert s.reconnects == 1
        assert server_next_step(server, s.id) == 20
    np.testing.assert_allclose(np.vstack([first, rest]), reference(x)[0], atol=ATOL)


def test_outputs_lost_in_flight_come_back_once_in_order(client, server, monkeypatch):
    x = rand(11, 40)
    with client.session("tiny", chunk_size=5, window=4) as s:
        # When the first Outputs arrives, wait until the server has applied all four
        # messages in flight (steps 0..19), then lose that Outputs and the connection.
        seen = drop_on_first(
            monkeypatch,
            "outputs",
            before=lambda: wait_for(lambda: server_next_step(server, s.id) == 20),
        )
        y = s.steps(x)
        assert seen["dropped"] == 1 and s.reconnects == 1
        assert s.next_step == 40 == server_next_step(server, s.id)  # no step applied twice
        y2 = s.steps(x[:3])  # and the state went on from step 40 exactly
    want, _ = reference(np.vstack([x, x[:3]]))
    assert y.shape == (40, 3)
    np.testing.assert_allclose(y, want[:40], atol=ATOL)
    np.testing.assert_allclose(y2, want[40:], atol=ATOL)


def test_many_to_one_resends_what_the_server_did_not_apply(client, server):
    x = rand(12, 30, f=3)
    with client.session("tiny-m2o", chunk_size=4) as s:
        s.steps(x[:20])
        wait_for(lambda: server_next_step(server, s.id) == 20)
        s._stream.call.cancel()
        s.steps(x[20:])  # sent on a dead stream: resent after the reconnect
        y = s.end()
        assert s.reconnects == 1 and server_next_step(server, s.id) == 30
    np.testing.assert_allclose(y, reference(x, m2o=True)[0][-1], atol=ATOL)


def test_many_to_one_partly_applied_before_the_drop(client, server, monkeypatch):
    x = rand(13, 25, f=3)
    with client.session("tiny-m2o", chunk_size=10) as s:
        s.steps(x[:12])
        wait_for(lambda: server_next_step(server, s.id) == 12)
        s._stream.call.cancel()
        # the client still holds steps 0..11 unacknowledged; Opened.next_step acks them
        s.steps(x[12:])
        y = s.end()
    np.testing.assert_allclose(y, reference(x, m2o=True)[0][-1], atol=ATOL)


def test_final_lost_after_end_is_rebuilt_in_many_to_many(client, server, monkeypatch):
    x = rand(14, 8)
    with client.session("tiny") as s:
        s.steps(x)
        drop_on_first(monkeypatch, "final")
        y = s.end(reset=True)  # the server ended the sequence; End is not sent twice
        assert s.reconnects == 1
        np.testing.assert_allclose(y, reference(x)[0][-1], atol=ATOL)
        again = s.steps(x[:2])  # reset happened exactly once
    np.testing.assert_allclose(again, reference(x[:2])[0], atol=ATOL)


def test_final_lost_in_many_to_one_is_data_loss_and_the_session_carries_on(
    client, server, monkeypatch
):
    x = rand(15, 8, f=3)
    with client.session("tiny-m2o") as s:
        s.steps(x)
        drop_on_first(monkeypatch, "final")
        with pytest.raises(rnnstream.DataLossError, match="Final was lost"):
            s.end()
        s.steps(x[:3])
        y = s.end()
    np.testing.assert_allclose(y, reference(x[:3], m2o=True)[0][-1], atol=ATOL)


def test_outputs_no_longer_cached_are_data_loss(client, server, monkeypatch):
    x = rand(16, 80)  # one message of 80 steps; the server caches the last 64 outputs
    with client.session("tiny", chunk_size=80) as s:
        drop_on_first(monkeypatch, "outputs")
        with pytest.raises(rnnstream.DataLossError, match=r"steps 0\.\.15"):
            s.steps(x)
        y = s.steps(x[:2])  # resyncs at step 80: nothing applied twice
        assert s.next_step == 82 == server_next_step(server, s.id)
    np.testing.assert_allclose(y, reference(np.vstack([x, x[:2]]))[0][80:], atol=ATOL)


def test_resume_by_id_from_a_second_client(client, server):
    x = rand(17, 16)
    with client.session("tiny") as s:
        first = s.steps(x[:9])
        session_id = s.id
    with (
        rnnstream.Client(server.address, timeout=10) as other,
        other.session(session_id=session_id) as s2,
    ):
        assert s2.next_step == 9 and s2.model.name == "tiny"
        rest = s2.steps(x[9:])
    np.testing.assert_allclose(np.vstack([first, rest]), reference(x)[0], atol=ATOL)


def test_superseded_is_not_retried(client, server):
    x = rand(18, 10)
    a = client.session("tiny")
    a.steps(x[:4])
    with rnnstream.Client(server.address, timeout=10) as other:
        b = other.session(session_id=a.id)
        b.steps(x[4:8])
        with pytest.raises(rnnstream.SessionEndedError) as err:
            a.step(x[8])
        assert err.value.reason == "SUPERSEDED" and a.reconnects == 0
        assert server_next_step(server, a.id) == 8  # a did not take the session back
        with pytest.raises(rnnstream.SessionEndedError):
            a.steps(x[8:])
        np.testing.assert_allclose(b.steps(x[8:]), reference(x)[0][8:], atol=ATOL)
        b.close()
    a.close()


def test_deleted_while_streaming(client):
    with client.session("tiny") as s:
        s.step([0.0, 1.0])
        client.delete_session(s.id)
        with pytest.raises(rnnstream.SessionEndedError) as err:
            s.step([0.0, 1.0])
        assert err.value.reason == "DELETED"


def test_close_flushes_unacknowledged_many_to_one_steps(client, server):
    x = rand(19, 6, f=3)
    s = client.session("tiny-m2o")
    s.steps(x)
    s.close()
    info = client.get_session(s.id)
    assert info.next_step == 6 and not info.live


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_server_gives_up_after_retries():
    with rnnstream.Client(f"127.0.0.1:{free_port()}", timeout=5, max_retries=2, backoff=0.01) as c:
        started = time.monotonic()
        with pytest.raises(rnnstream.UnavailableError):
            c.session("tiny")
        with pytest.raises(rnnstream.UnavailableError):
            c.models()
        assert time.monotonic() - started < 10


def test_draining_is_retried_then_unavailable(tiny_models):
    from rnnstream.server.server import BackgroundServer
    from rnnstream.server.settings import Settings

    settings = Settings.from_env(
        {}, models=tiny_models, host="127.0.0.1", port=0, grace_s=0.2, state_dir=""
    )
    srv = BackgroundServer(settings).start()
    try:
        with rnnstream.Client(srv.address, timeout=5, max_retries=2, backoff=0.01) as c:
            s = c.session("tiny")
            s.step([0.0, 1.0])
            srv.stop(grace=0.2)
            with pytest.raises(rnnstream.UnavailableError):
                s.step([0.0, 1.0])  # SessionEnded(DRAINING) -> reconnect -> nothing there
            s.close()
    finally:
        srv.stop()
