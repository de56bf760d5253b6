"""End-to-end through raw generated stubs: what a client in any language does with the proto."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from rnnstream.v1 import rnnstream_pb2 as pb
from rnnstream.v1 import rnnstream_pb2_grpc as pb_grpc
from tests.conftest import TINY, TINY_M2O


@pytest.fixture
def stub(server):
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.PredictorStub(channel)


def open_msg(**kwargs) -> pb.StreamRequest:
    return pb.StreamRequest(open=pb.Open(**kwargs))


def steps_msg(start: int, x: np.ndarray) -> pb.StreamRequest:
    return pb.StreamRequest(steps=pb.Steps(start=start, x=x.ravel().tolist()))


def test_many_to_many_one_step_per_message_matches_reference(stub):
    x = np.random.default_rng(0).standard_normal((1, 20, 2)).astype(np.float32)
    requests = [open_msg(model="tiny")] + [steps_msg(t, x[0, t]) for t in range(20)]
    responses = list(stub.Stream(iter(requests), timeout=30))
    assert responses[0].WhichOneof("kind") == "opened"
    assert responses[0].opened.next_step == 0
    outputs = [r.outputs for r in responses[1:21]]
    assert [o.start for o in outputs] == list(range(20))
    y = np.array([o.y for o in outputs])
    want, _ = TINY.run(x)
    np.testing.assert_allclose(y, want[0], atol=1e-5)
    # half-close ends the sequence with a Final
    assert responses[-1].final.steps == 20


def test_many_steps_per_message_and_return_state(stub):
    x = np.random.default_rng(1).standard_normal((1, 12, 2)).astype(np.float32)
    requests = [
        open_msg(model="tiny", return_state=True),
        steps_msg(0, x[0, :5]),
        steps_msg(5, x[0, 5:]),
    ]
    responses = list(stub.Stream(iter(requests), timeout=30))
    want_y, want_h = TINY.run(x)
    y = np.concatenate([np.array(r.outputs.y).reshape(-1, 3) for r in responses[1:3]])
    h = np.concatenate([np.array(r.outputs.state).reshape(-1, 5) for r in responses[1:3]])
    np.testing.assert_allclose(y, want_y[0], atol=1e-5)
    np.testing.assert_allclose(h, want_h[0], atol=1e-5)
    np.testing.assert_allclose(responses[-1].final.state, want_h[0, -1], atol=1e-5)


def test_many_to_one_final_at_end(stub):
    x = np.random.default_rng(2).standard_normal((1, 30, 3)).astype(np.float32)
    requests = [
        open_msg(model="tiny-m2o"),
        steps_msg(0, x[0]),
        pb.StreamRequest(end=pb.End(reset=True)),
    ]
    responses = list(stub.Stream(iter(requests), timeout=30))
    kinds = [r.WhichOneof("kind") for r in responses]
    assert kinds == ["opened", "final"]
    want, _ = TINY_M2O.run(x)
    np.testing.assert_allclose(responses[1].final.y, want[0, -1], atol=1e-5)
    assert responses[1].final.steps == 30


def test_bad_width_is_invalid_argument(stub):
    requests = [
        open_msg(model="tiny"),
        pb.StreamRequest(steps=pb.Steps(start=0, x=[1.0, 2.0, 3.0])),
    ]
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Stream(iter(requests), timeout=30))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "3 values" in err.value.details() and "multiple of 2" in err.value.details()
