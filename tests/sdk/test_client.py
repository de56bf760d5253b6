"""The blocking SDK against a real server: results equal the numpy reference."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

import rnnstream
from rnnstream.v1 import rnnstream_pb2 as pb
from tests.conftest import TINY
from tests.sdk.conftest import rand, reference, server_next_step

ATOL = 1e-5


def test_step_steps_end_match_reference(client):
    x = rand(0, 30)
    want, _ = reference(x)
    with client.session("tiny") as s:
        assert s.model.n_features == 2 and s.model.n_outputs == 3 and s.next_step == 0
        ys = [s.step(x[t]) for t in range(10)]
        assert all(y.shape == (3,) and y.dtype == np.float32 for y in ys)
        rest = s.steps(x[10:])
        assert rest.shape == (20, 3) and rest.dtype == np.float32
        assert s.next_step == 30
        last = s.end()
    np.testing.assert_allclose(np.vstack([np.array(ys), rest]), want, atol=ATOL)
    np.testing.assert_allclose(last, want[-1], atol=ATOL)


def test_chunked_steps_equal_one_step_per_message(client):
    x = rand(1, 50)
    with client.session("tiny", chunk_size=1) as a:
        one = a.steps(x)
    with client.session("tiny", chunk_size=7, window=3) as b:
        chunked = b.steps(x)
    with client.session("tiny", chunk_size=256) as c:
        whole = c.steps(x)
    np.testing.assert_allclose(one, reference(x)[0], atol=ATOL)
    np.testing.assert_allclose(chunked, one, atol=ATOL)
    np.testing.assert_allclose(whole, one, atol=ATOL)


def test_end_reset_starts_over_and_no_reset_continues(client):
    x = rand(2, 12)
    with client.session("tiny") as s:
        s.steps(x[:6])
        s.end(reset=False)
        continued = s.steps(x[6:])
        s.end(reset=True)
        fresh = s.steps(x[6:])
        assert s.next_step == 18  # numbering continues across sequences
    np.testing.assert_allclose(continued, reference(x)[0][6:], atol=ATOL)
    np.testing.assert_allclose(fresh, reference(x[6:])[0], atol=ATOL)


def test_end_of_an_empty_sequence_is_empty(client):
    with client.session("tiny") as s:
        assert s.end().shape == (0,)


def test_many_to_one(client):
    x = rand(3, 40, f=3)
    with client.session("tiny-m2o", chunk_size=16) as s:
        assert not s.return_sequences and s.model.return_sequences is False
        assert s.steps(x[:39]).shape == (0, 1)
        assert s.step(x[39]).shape == (0,)
        y = s.end()
        assert s.next_step == 40
    np.testing.assert_allclose(y, reference(x, m2o=True)[0][-1], atol=ATOL)


def test_many_to_one_mode_on_a_many_to_many_model(client):
    x = rand(4, 9)
    with client.session("tiny", return_sequences=False) as s:
        s.steps(x)
        y = s.end()
    np.testing.assert_allclose(y, reference(x)[0][-1], atol=ATOL)


def test_return_state(client):
    x = rand(5, 11)
    want_y, want_h = reference(x)
    with client.session("tiny", return_state=True, chunk_size=4) as s:
        y = s.steps(x)
        assert s.states is not None and s.states.shape == (11, 5)
        np.testing.assert_allclose(s.states, want_h, atol=ATOL)
        np.testing.assert_allclose(s.state, want_h[-1], atol=ATOL)
        s.end(reset=False)
        np.testing.assert_allclose(s.state, want_h[-1], atol=ATOL)
    np.testing.assert_allclose(y, want_y, atol=ATOL)


def test_predict(client):
    x = np.stack([rand(6, 8), rand(7, 8)])  # [2, 8, 2]
    want, _ = TINY.run(x)
    y = client.predict(x, model="tiny")
    assert y.shape == (2, 8, 3)
    np.testing.assert_allclose(y, want, atol=ATOL)
    np.testing.assert_allclose(client.predict(x[0], model="tiny"), want[0], atol=ATOL)
    last = client.predict(x, model="tiny", return_sequences=False)
    np.testing.assert_allclose(last, want[:, -1], atol=ATOL)
    np.testing.assert_allclose(client.predict(x[1]), want[1], atol=ATOL)  # default model


def test_models_and_health(client):
    infos = {m.name: m for m in client.models()}
    assert set(infos) == {"tiny", "tiny-m2o"}
    tiny = infos["tiny"]
    assert (tiny.n_features, tiny.n_outputs, tiny.state_size) == (2, 3, 5)
    assert tiny.cell == "rnn" and tiny.layers == 1 and tiny.hidden_size == 5
    assert tiny.output_names == ("y0", "y1", "y2") and tiny.feature_names == ("f0", "f1")
    assert tiny.return_sequences and not infos["tiny-m2o"].return_sequences
    assert client.default_model() == "tiny"
    assert client.health() == "SERVING"


def test_get_session_and_delete(client, server):
    s = client.session("tiny")
    s.steps(rand(8, 5))
    info = client.get_session(s.id)
    assert info.session_id == s.id and info.next_step == 5 and info.live
    assert info.model == "tiny" and info.sequence_steps == 5
    s.delete()
    with pytest.raises(rnnstream.NotFoundError):
        client.get_session(s.id)
    with pytest.raises(RuntimeError, match="closed"):
        s.step([0.0, 0.0])
    with pytest.raises(rnnstream.NotFoundError):
        client.delete_session(s.id)


def test_unknown_model_is_not_found_with_the_servers_message(client):
    with pytest.raises(rnnstream.NotFoundError) as err:
        client.session("no-such-model")
    assert err.value.code == grpc.StatusCode.NOT_FOUND
    assert "no-such-model" in err.value.details
    with pytest.raises(rnnstream.NotFoundError):
        client.predict(rand(0, 3), model="no-such-model")


def test_bad_shapes_are_value_errors_before_sending(client):
    with client.session("tiny") as s:
        with pytest.raises(ValueError, match=r"shape \[2\]"):
            s.step([1.0, 2.0, 3.0])
        with pytest.raises(ValueError, match=r"\[T, 2\]"):
            s.steps(np.zeros((4, 3)))
        with pytest.raises(ValueError, match="no steps"):
            s.steps(np.zeros((0, 2)))
        with pytest.raises(ValueError, match="non-finite"):
            s.steps(np.array([[0.0, 1.0], [np.nan, 0.0]]))
        with pytest.raises(ValueError, match="float32"):
            s.step(["a", "b"])
        assert s.next_step == 0
        want = reference(np.array([[0.5, -0.5]]))[0][0]
        np.testing.assert_allclose(s.step([0.5, -0.5]), want, atol=ATOL)
    with pytest.raises(ValueError, match="n_features=2"):
        client.predict(np.zeros((2, 4, 3)), model="tiny")
    with pytest.raises(ValueError, match="chunk_size"):
        client.session("tiny", chunk_size=0)


def test_a_refused_message_is_invalid_argument_and_the_session_carries_on(client, server):
    x = rand(9, 6)
    with client.session("tiny") as s:
        s.steps(x[:3])
        # bypass the client-side checks: 3 values for a 2-feature model
        s._core.enqueue(np.zeros((1, 3), dtype=np.float32))
        with pytest.raises(rnnstream.InvalidArgumentError) as err:
            s._run(s._core.drained)
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "multiple of 2" in err.value.details
        # the server kept the session; the next call resyncs from where it stands
        rest = s.steps(x[3:])
        assert s.next_step == 6 == server_next_step(server, s.id)
    np.testing.assert_allclose(rest, reference(x)[0][3:], atol=ATOL)


def test_error_mapping():
    class Fake(grpc.RpcError):
        def __init__(self, code):
            self._code = code

        def code(self):
            return self._code

        def details(self):
            return "what to fix"

    cases = {
        grpc.StatusCode.INVALID_ARGUMENT: rnnstream.InvalidArgumentError,
        grpc.StatusCode.NOT_FOUND: rnnstream.NotFoundError,
        grpc.StatusCode.FAILED_PRECONDITION: rnnstream.FailedPreconditionError,
        grpc.StatusCode.RESOURCE_EXHAUSTED: rnnstream.ResourceExhaustedError,
        grpc.StatusCode.UNAVAILABLE: rnnstream.UnavailableError,
        grpc.StatusCode.INTERNAL: rnnstream.RnnstreamError,
    }
    for code, cls in cases.items():
        error = rnnstream.from_rpc_error(Fake(code))
        assert type(error) is cls and error.code == code and error.details == "what to fix"
        assert str(error) == f"{code.name}: what to fix"
    ended = rnnstream.SessionEndedError("moved", reason="SUPERSEDED")
    assert isinstance(ended, rnnstream.RnnstreamError) and ended.reason == "SUPERSEDED"


def test_raw_steps_request_round_trip():
    from rnnstream import _codec

    req = _codec.steps_request(7, np.arange(6, dtype=np.float32).reshape(3, 2))
    assert req.steps.start == 7 and list(req.steps.x) == [0, 1, 2, 3, 4, 5]
    assert isinstance(req, pb.StreamRequest)
