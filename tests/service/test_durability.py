"""Sessions survive restarts: drain writes a snapshot, start restores it, a crash loses at most
the snapshot interval, and a snapshot never lands on a different graph."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from rnnstream.server.server import BackgroundServer
from rnnstream.server.settings import Settings
from rnnstream.v1 import rnnstream_pb2 as pb
from rnnstream.v1 import rnnstream_pb2_grpc as pb_grpc
from tests.conftest import TINY, tiny_server_settings
from tests.service.duplex import Duplex, outputs_y
from tests.service.processes import start_process, stop_process

REPO = Path(__file__).resolve().parents[2]
X = np.random.default_rng(42).standard_normal((16, 2)).astype(np.float32)
WANT, _ = TINY.run(X[None])


def settings(models: Path, state: Path, **extra: object) -> Settings:
    return tiny_server_settings(models, state_dir=str(state), **extra)


def test_restart_restores_every_session_at_its_exact_step(tiny_models, tmp_path):
    ids = []
    server = BackgroundServer(settings(tiny_models, tmp_path)).start()
    try:
        with grpc.insecure_channel(server.address) as ch:
            stub = pb_grpc.PredictorStub(ch)
            for n in (3, 5, 7):
                s = Duplex(stub)
                ids.append((s.open(model="tiny").session_id, n))
                s.steps(0, X[:n])
                if n != 7:
                    s.half_close()  # two idle sessions, one still live at shutdown
            server.stop()
            assert s.recv().ended.reason == pb.END_REASON_DRAINING
    finally:
        server.stop()
    with (
        BackgroundServer(settings(tiny_models, tmp_path)) as server,
        grpc.insecure_channel(server.address) as ch,
    ):
        stub = pb_grpc.PredictorStub(ch)
        for sid, n in ids:
            r = Duplex(stub)
            opened = r.open(session_id=sid)
            assert opened.next_step == n and opened.restored_step == n
            again = r.steps(
                n - 2, X[n - 2 :]
            )  # two retransmitted, answered from the restored cache
            assert again.start == n - 2
            np.testing.assert_allclose(outputs_y(again, 3), WANT[0, n - 2 :], atol=1e-5)
            info = stub.GetSession(pb.GetSessionRequest(session_id=sid))
            assert info.restored_step == n and info.next_step == 16
            r.half_close()


def test_snapshot_from_another_graph_is_refused_per_session(tiny_models, tmp_path):
    models = tmp_path / "models"
    TINY.write(models / "tiny" / "1", "tiny", "1")
    with (
        BackgroundServer(settings(models, tmp_path / "state")) as server,
        grpc.insecure_channel(server.address) as ch,
    ):
        s = Duplex(pb_grpc.PredictorStub(ch))
        sid = s.open(model="tiny").session_id
        s.steps(0, X[:4])
        s.half_close()
    from tests.tiny_model import TinyRnn

    TinyRnn.random(2, 5, 3, seed=99).write(
        models / "tiny" / "1", "tiny", "1"
    )  # same shapes, new weights
    with (
        BackgroundServer(settings(models, tmp_path / "state")) as server,
        grpc.insecure_channel(server.address) as ch,
    ):
        with pytest.raises(grpc.RpcError) as err:
            Duplex(pb_grpc.PredictorStub(ch)).open(session_id=sid)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert (
            "was not restored: its state belongs to another graph of tiny/1" in err.value.details()
        )


def test_empty_state_dir_keeps_nothing(tiny_models, tmp_path):
    with (
        BackgroundServer(settings(tiny_models, "")) as server,
        grpc.insecure_channel(server.address) as ch,
    ):
        s = Duplex(pb_grpc.PredictorStub(ch))
        sid = s.open(model="tiny").session_id
        s.half_close()
    with (
        BackgroundServer(settings(tiny_models, "")) as server,
        grpc.insecure_channel(server.address) as ch,
    ):
        with pytest.raises(grpc.RpcError) as err:
            Duplex(pb_grpc.PredictorStub(ch)).open(session_id=sid)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_sigterm_then_restart_resumes_live_streams(tiny_models, tmp_path):
    proc, address = start_process(tiny_models, tmp_path)
    try:
        with grpc.insecure_channel(address) as ch:
            s = Duplex(pb_grpc.PredictorStub(ch))
            sid = s.open(model="tiny").session_id
            first = outputs_y(s.steps(0, X[:6]), 3)
            assert stop_process(proc, signal.SIGTERM) == 0
            assert s.recv().ended.reason == pb.END_REASON_DRAINING
    finally:
        if proc.poll() is None:
            proc.kill()
    proc, address = start_process(tiny_models, tmp_path)
    try:
        with grpc.insecure_channel(address) as ch:
            r = Duplex(pb_grpc.PredictorStub(ch))
            assert r.open(session_id=sid).next_step == 6
            rest = outputs_y(r.steps(6, X[6:]), 3)
            np.testing.assert_allclose(np.concatenate([first, rest]), WANT[0], atol=1e-5)
            r.half_close()
    finally:
        stop_process(proc, signal.SIGTERM)


def test_kill_9_loses_at_most_the_snapshot_interval_and_says_so(tiny_models, tmp_path):
    proc, address = start_process(tiny_models, tmp_path, "--snapshot-interval-s", "0.3")
    try:
        with grpc.insecure_channel(address) as ch:
            s = Duplex(pb_grpc.PredictorStub(ch))
            sid = s.open(model="tiny").session_id
            s.steps(0, X[:4])
            written = time.time()
            snapshot = tmp_path / "sessions.snapshot.npz"
            deadline = time.monotonic() + 30  # wait for a periodic snapshot taken after step 4
            while not (snapshot.exists() and snapshot.stat().st_mtime > written + 0.05):
                assert time.monotonic() < deadline, "no periodic snapshot was written"
                time.sleep(0.05)
            s.steps(4, X[4:6])  # may be lost: no snapshot after it
            stop_process(proc, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
    proc, address = start_process(tiny_models, tmp_path)
    try:
        with grpc.insecure_channel(address) as ch:
            r = Duplex(pb_grpc.PredictorStub(ch))
            opened = r.open(session_id=sid)
            assert opened.restored_step in (4, 6) and opened.next_step == opened.restored_step
            n = opened.next_step
            out = outputs_y(r.steps(n, X[n:]), 3)
            np.testing.assert_allclose(out, WANT[0, n:], atol=1e-5)  # resent from there: exact
            r.half_close()
    finally:
        stop_process(proc, signal.SIGTERM)
