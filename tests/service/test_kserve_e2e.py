"""KServe v2 / Triton gRPC against a real server, through a client generated from the proto.

Every output is compared with the native API's for the same inputs.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest

import rnnstream
from rnnstream.kserve import grpc_service_pb2 as kpb
from rnnstream.kserve import grpc_service_pb2_grpc as kpb_grpc
from rnnstream.server import kserve_mapping
from rnnstream.server.kserve_servicer import SERVICE_NAME

TOL = 1e-5


@pytest.fixture(scope="module")
def stub(server):
    channel = grpc.insecure_channel(server.address)
    yield kpb_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


@pytest.fixture(scope="module")
def native(server):
    client = rnnstream.Client(server.address)
    yield client
    client.close()


def _request(
    x: np.ndarray,
    model: str = "tiny",
    sequence_id: int | str = 0,
    start: bool = False,
    end: bool = False,
    request_id: str = "",
) -> kpb.ModelInferRequest:
    request = kpb.ModelInferRequest(model_name=model, id=request_id)
    request.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(np.asarray(x, "<f4").tobytes())
    if sequence_id:
        if isinstance(sequence_id, str):
            request.parameters["sequence_id"].string_param = sequence_id
        else:
            request.parameters["sequence_id"].int64_param = sequence_id
        request.parameters["sequence_start"].bool_param = start
        request.parameters["sequence_end"].bool_param = end
    return request


def _y(response: kpb.ModelInferResponse) -> np.ndarray:
    (output,) = response.outputs
    assert output.name == "y" and output.datatype == "FP32"
    return np.frombuffer(response.raw_output_contents[0], "<f4").reshape(list(output.shape))


def _x(seed: int, steps: int, features: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((steps, features)).astype(np.float32)


def test_health_and_metadata(stub, server):
    assert stub.ServerLive(kpb.ServerLiveRequest()).live
    assert stub.ServerReady(kpb.ServerReadyRequest()).ready
    assert stub.ModelReady(kpb.ModelReadyRequest(name="tiny")).ready
    assert not stub.ModelReady(kpb.ModelReadyRequest(name="nope")).ready
    assert "sequence" in stub.ServerMetadata(kpb.ServerMetadataRequest()).extensions
    metadata = stub.ModelMetadata(kpb.ModelMetadataRequest(name="tiny-m2o"))
    assert metadata.versions == ["1"]
    assert [list(t.shape) for t in metadata.inputs] == [[-1, 3]]
    assert [list(t.shape) for t in metadata.outputs] == [[1]]
    config = stub.ModelConfig(kpb.ModelConfigRequest(name="tiny")).config
    assert config.name == "tiny" and config.HasField("sequence_batching")
    client = rnnstream.Client(server.address)
    try:
        assert client.health(SERVICE_NAME) == "SERVING"
    finally:
        client.close()


def test_unimplemented_method_says_so(stub):
    with pytest.raises(grpc.RpcError) as err:
        stub.RepositoryIndex(kpb.RepositoryIndexRequest())
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.parametrize("model", ["tiny", "tiny-m2o"])
def test_model_infer_without_sequence_is_predict(stub, native, model):
    f = 2 if model == "tiny" else 3
    x = _x(1, 6, f)
    response = stub.ModelInfer(_request(x, model, request_id="abc"))
    assert response.id == "abc" and response.model_version == "1"
    expected = native.predict(x, model=model, return_sequences=(model == "tiny"))
    np.testing.assert_allclose(_y(response), expected, atol=TOL)
    batch = np.stack([x, _x(2, 6, f)])
    batched = _y(stub.ModelInfer(_request(batch, model)))
    np.testing.assert_allclose(
        batched, native.predict(batch, model=model, return_sequences=(model == "tiny")), atol=TOL
    )


def _native_sequence(native, chunks: list[np.ndarray], model: str = "tiny") -> list[np.ndarray]:
    with native.session(model, return_sequences=True) as session:
        return [session.steps(chunk) for chunk in chunks]


def test_unary_sequence_matches_a_native_session(stub, native):
    chunks = [_x(3, 2), _x(4, 3), _x(5, 1)]
    got = [
        _y(stub.ModelInfer(_request(chunks[0], sequence_id=11, start=True))),
        _y(stub.ModelInfer(_request(chunks[1][None], sequence_id=11))),  # [1, T, F] too
        _y(stub.ModelInfer(_request(chunks[2], sequence_id=11, end=True))),
    ]
    assert got[1].shape == (1, 3, 3)
    for y, expected in zip(got, _native_sequence(native, chunks), strict=True):
        np.testing.assert_allclose(y.reshape(expected.shape), expected, atol=TOL)
    # Ended: the id names no sequence until started again.
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(_request(chunks[0], sequence_id=11))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "START" in (err.value.details() or "")


def test_many_to_one_sequence_answers_the_last_step(stub, native):
    chunks = [_x(6, 4, 3), _x(7, 2, 3)]
    first = _y(stub.ModelInfer(_request(chunks[0], "tiny-m2o", "m2o-seq", start=True)))
    last = _y(stub.ModelInfer(_request(chunks[1], "tiny-m2o", "m2o-seq", end=True)))
    expected = _native_sequence(native, chunks, "tiny-m2o")
    assert first.shape == (1,)
    np.testing.assert_allclose(first, expected[0][-1], atol=TOL)
    np.testing.assert_allclose(last, expected[1][-1], atol=TOL)


def _code(stub, request) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(request)
    return err.value.code()


def test_errors_follow_the_protocol_and_change_no_state(stub, native, server):
    x = _x(8, 2)
    assert _code(stub, _request(x, model="nope")) == grpc.StatusCode.NOT_FOUND
    assert _code(stub, _request(x, sequence_id=404)) == grpc.StatusCode.INVALID_ARGUMENT
    wrong_dtype = _request(x, sequence_id=21, start=True)
    wrong_dtype.inputs[0].datatype = "FP64"
    assert _code(stub, wrong_dtype) == grpc.StatusCode.INVALID_ARGUMENT
    # A refused start creates nothing.
    assert _code(stub, _request(x, sequence_id=21)) == grpc.StatusCode.INVALID_ARGUMENT
    first = _y(stub.ModelInfer(_request(x, sequence_id=21, start=True)))
    session_id = kserve_mapping.session_id_for("tiny", 21)
    before = native.get_session(session_id).next_step
    wrong_shape = _request(_x(9, 2, 3), sequence_id=21)
    assert _code(stub, wrong_shape) == grpc.StatusCode.INVALID_ARGUMENT
    nan = _request(np.full((2, 2), np.nan, np.float32), sequence_id=21, end=True)
    assert _code(stub, nan) == grpc.StatusCode.INVALID_ARGUMENT
    assert native.get_session(session_id).next_step == before
    second = _y(stub.ModelInfer(_request(_x(10, 3), sequence_id=21, end=True)))
    expected = _native_sequence(native, [x, _x(10, 3)])
    np.testing.assert_allclose(first, expected[0], atol=TOL)
    np.testing.assert_allclose(second, expected[1], atol=TOL)


def test_stream_interleaves_sequences_answers_errors_and_keeps_going(stub, native):
    chunks = {seq: [_x(100 * seq + i, 1 + i) for i in range(3)] for seq in (31, 32, 33)}
    requests = []
    for i in range(3):
        for seq, xs in chunks.items():
            requests.append(
                _request(xs[i], sequence_id=seq, start=i == 0, end=i == 2, request_id=f"{seq}/{i}")
            )
        requests.append(_request(xs[0], model="nope", request_id=f"bad/{i}"))
    responses = list(stub.ModelStreamInfer(iter(requests)))
    assert len(responses) == len(requests)
    by_id = {r.infer_response.id: r for r in responses}
    for i in range(3):
        assert "not served" in by_id[f"bad/{i}"].error_message
    for seq, xs in chunks.items():
        for i, expected in enumerate(_native_sequence(native, xs)):
            response = by_id[f"{seq}/{i}"]
            assert response.error_message == ""
            np.testing.assert_allclose(_y(response.infer_response), expected, atol=TOL)


def test_a_sequence_outlives_a_dropped_stream_and_a_second_start_resumes_it(stub, native):
    chunks = [_x(41, 2), _x(42, 2)]
    first_stream = stub.ModelStreamInfer(
        iter([_request(chunks[0], sequence_id="outlives", start=True)])
    )
    first = next(first_stream)
    first_stream.cancel()
    second = list(
        stub.ModelStreamInfer(
            iter([_request(chunks[1], sequence_id="outlives", start=True, end=True)])
        )
    )
    expected = _native_sequence(native, chunks)
    np.testing.assert_allclose(_y(first.infer_response), expected[0], atol=TOL)
    assert second[0].error_message == ""
    np.testing.assert_allclose(_y(second[0].infer_response), expected[1], atol=TOL)
