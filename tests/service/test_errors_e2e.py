"""Every bad input of the README's error table: right status, a message that says what to fix,
no state change, and the server keeps serving everyone else."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from rnnstream.v1 import rnnstream_pb2 as pb
from rnnstream.v1 import rnnstream_pb2_grpc as pb_grpc
from tests.conftest import TINY
from tests.service.duplex import Duplex, outputs_y, steps_msg

X = np.random.default_rng(5).standard_normal((10, 2)).astype(np.float32)
WANT, _ = TINY.run(X[None])
C = grpc.StatusCode


@pytest.fixture
def stub(server):
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.PredictorStub(channel)


def steps_raw(start: int, values: list[float]) -> pb.StreamRequest:
    return pb.StreamRequest(steps=pb.Steps(start=start, x=values))


# (name, message sent after Open + 3 good steps, code, fragment of the message)
IN_SESSION = [
    ("empty x", steps_raw(3, []), C.INVALID_ARGUMENT, "Steps.x is empty"),
    ("wrong width", steps_raw(3, [1.0, 2.0, 3.0]), C.INVALID_ARGUMENT, "multiple of 2 values"),
    ("NaN", steps_raw(3, [1.0, float("nan")]), C.INVALID_ARGUMENT, "non-finite value (nan)"),
    ("Inf", steps_raw(3, [1.0, 2.0, float("inf"), 0.0]), C.INVALID_ARGUMENT, "at step 1"),
    (
        "second Open",
        pb.StreamRequest(open=pb.Open(model="tiny")),
        C.INVALID_ARGUMENT,
        "Open only once",
    ),
    ("empty request", pb.StreamRequest(), C.INVALID_ARGUMENT, "set one of open, steps or end"),
    ("gap", steps_raw(7, [1.0, 2.0]), C.FAILED_PRECONDITION, "resend from step 3"),
]


@pytest.mark.parametrize(
    ("name", "bad", "code", "fragment"), IN_SESSION, ids=[c[0] for c in IN_SESSION]
)
def test_bad_message_in_session_changes_nothing(stub, name, bad, code, fragment):
    s = Duplex(stub)
    sid = s.open(model="tiny").session_id
    s.steps(0, X[:3])
    s.send(bad)
    with pytest.raises(grpc.RpcError) as err:
        s.recv()
    assert err.value.code() == code, err.value.details()
    assert fragment in err.value.details()
    # the session is intact: resume, continue, and the outputs are as if nothing happened
    r = Duplex(stub)
    assert r.open(session_id=sid).next_step == 3
    np.testing.assert_allclose(outputs_y(r.steps(3, X[3:]), 3), WANT[0, 3:], atol=1e-5)
    r.half_close()


# (name, first message of a stream, code, fragment)
AT_OPEN = [
    (
        "Steps before Open",
        steps_msg(0, X[:1]),
        C.INVALID_ARGUMENT,
        "first message of a stream must be Open",
    ),
    (
        "End before Open",
        pb.StreamRequest(end=pb.End()),
        C.INVALID_ARGUMENT,
        "must be Open, got end",
    ),
    (
        "unknown model",
        pb.StreamRequest(open=pb.Open(model="nope")),
        C.NOT_FOUND,
        "model 'nope' is not served",
    ),
    (
        "unknown version",
        pb.StreamRequest(open=pb.Open(model="tiny", version="9")),
        C.NOT_FOUND,
        "has no version '9'",
    ),
    (
        "unknown session",
        pb.StreamRequest(open=pb.Open(session_id="not-a-session-0123456789")),
        C.NOT_FOUND,
        "open a new session with an empty Open.session_id",
    ),
    (
        "session id outside the rule",
        pb.StreamRequest(open=pb.Open(session_id="not a session")),
        C.INVALID_ARGUMENT,
        "16 to 128 characters of [A-Za-z0-9_-]",
    ),
    (
        "create of an id outside the rule",
        pb.StreamRequest(open=pb.Open(model="tiny", session_id="x" * 129, create=True)),
        C.INVALID_ARGUMENT,
        "16 to 128 characters of [A-Za-z0-9_-]",
    ),
]


@pytest.mark.parametrize(
    ("name", "first", "code", "fragment"), AT_OPEN, ids=[c[0] for c in AT_OPEN]
)
def test_bad_stream_start(stub, name, first, code, fragment):
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Stream(iter([first]), timeout=30))
    assert err.value.code() == code
    assert fragment in err.value.details()


def test_resume_with_another_model_is_refused(stub):
    s = Duplex(stub)
    sid = s.open(model="tiny").session_id
    s.half_close()
    with pytest.raises(grpc.RpcError) as err:
        list(
            stub.Stream(
                iter([pb.StreamRequest(open=pb.Open(session_id=sid, model="tiny-m2o"))]), timeout=30
            )
        )
    assert err.value.code() == C.INVALID_ARGUMENT
    assert "belongs to model tiny/1" in err.value.details()


PREDICT = [
    (
        "no sequences",
        pb.PredictRequest(model="tiny", x=[1.0, 2.0]),
        C.INVALID_ARGUMENT,
        "n_sequences is 0",
    ),
    (
        "ragged",
        pb.PredictRequest(model="tiny", x=[1.0, 2.0, 3.0], n_sequences=1),
        C.INVALID_ARGUMENT,
        "n_sequences * T * 2 values",
    ),
    (
        "NaN",
        pb.PredictRequest(model="tiny", x=[1.0, float("nan")], n_sequences=1),
        C.INVALID_ARGUMENT,
        "non-finite",
    ),
    (
        "unknown model",
        pb.PredictRequest(model="nope", x=[1.0], n_sequences=1),
        C.NOT_FOUND,
        "not served",
    ),
]


@pytest.mark.parametrize(
    ("name", "request_", "code", "fragment"), PREDICT, ids=[c[0] for c in PREDICT]
)
def test_bad_predict(stub, name, request_, code, fragment):
    with pytest.raises(grpc.RpcError) as err:
        stub.Predict(request_, timeout=30)
    assert err.value.code() == code
    assert fragment in err.value.details()


def test_unknown_session_lookups(stub):
    for call in (stub.GetSession, stub.DeleteSession):
        with pytest.raises(grpc.RpcError) as err:
            call(pb.GetSessionRequest(session_id="missing-0123456789"), timeout=30)  # same shape
        assert err.value.code() == C.NOT_FOUND


def test_session_lookups_of_ids_outside_the_rule_are_invalid(stub):
    for call in (stub.GetSession, stub.DeleteSession):
        with pytest.raises(grpc.RpcError) as err:
            call(pb.GetSessionRequest(session_id="missing"), timeout=30)  # same wire shape
        assert err.value.code() == C.INVALID_ARGUMENT
        assert "16 to 128 characters" in err.value.details()


def test_garbage_bytes_are_refused_and_server_keeps_serving(server, stub):
    with grpc.insecure_channel(server.address) as channel:
        raw = channel.unary_unary(
            "/rnnstream.v1.Predictor/Predict",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        with pytest.raises(grpc.RpcError) as err:
            raw(b"\xff\xff\xff\xff garbage", timeout=30)
        assert err.value.code() in (C.INTERNAL, C.INVALID_ARGUMENT, C.UNKNOWN)
    response = stub.Predict(
        pb.PredictRequest(model="tiny", x=X.ravel().tolist(), n_sequences=1, return_sequences=True)
    )
    np.testing.assert_allclose(np.array(response.y).reshape(10, 3), WANT[0], atol=1e-5)


def test_predict_matches_reference(stub):
    x = np.random.default_rng(9).standard_normal((4, 7, 2)).astype(np.float32)
    want, _ = TINY.run(x)
    full = stub.Predict(
        pb.PredictRequest(x=x.ravel().tolist(), n_sequences=4, return_sequences=True)
    )
    assert list(full.shape) == [4, 7, 3] and full.model.name == "tiny"
    np.testing.assert_allclose(np.array(full.y).reshape(4, 7, 3), want, atol=1e-5)
    last = stub.Predict(pb.PredictRequest(model="tiny", x=x.ravel().tolist(), n_sequences=4))
    assert list(last.shape) == [4, 3]
    np.testing.assert_allclose(np.array(last.y).reshape(4, 3), want[:, -1], atol=1e-5)


def test_list_models(stub):
    response = stub.ListModels(pb.ListModelsRequest())
    assert response.default_model == "tiny"
    by_name = {m.name: m for m in response.models}
    assert set(by_name) == {"tiny", "tiny-m2o"}
    tiny = by_name["tiny"]
    assert (tiny.n_features, tiny.n_outputs, tiny.state_size, tiny.cell) == (2, 3, 5, "rnn")
    assert tiny.provider == "CPUExecutionProvider"
