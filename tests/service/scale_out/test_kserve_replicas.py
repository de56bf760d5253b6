"""A KServe v2 sequence started on one server process continues on another (shared store)."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from rnnstream.kserve import grpc_service_pb2 as kpb
from rnnstream.kserve import grpc_service_pb2_grpc as kpb_grpc
from tests.service.scale_out.conftest import Reference, Start


def _request(x: np.ndarray, sequence_id: int, start: bool = False, end: bool = False):
    request = kpb.ModelInferRequest(model_name="tiny")
    request.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.astype("<f4").tobytes())
    request.parameters["sequence_id"].uint64_param = sequence_id
    request.parameters["sequence_start"].bool_param = start
    request.parameters["sequence_end"].bool_param = end
    return request


def _y(response: kpb.ModelInferResponse) -> np.ndarray:
    return np.frombuffer(response.raw_output_contents[0], "<f4").reshape(
        list(response.outputs[0].shape)
    )


def test_a_sequence_moves_between_replicas_by_its_id(want: Reference, start_replica: Start):
    _, a_address = start_replica()
    _, b_address = start_replica()
    x = np.random.default_rng(5).standard_normal((9, 2)).astype(np.float32)
    with grpc.insecure_channel(a_address) as a, grpc.insecure_channel(b_address) as b:
        on_a, on_b = kpb_grpc.GRPCInferenceServiceStub(a), kpb_grpc.GRPCInferenceServiceStub(b)
        got = [_y(on_a.ModelInfer(_request(x[:4], 77, start=True)))]
        got.append(_y(on_b.ModelInfer(_request(x[4:6], 77))))
        got.append(_y(on_a.ModelInfer(_request(x[6:], 77, end=True))))
        np.testing.assert_allclose(np.concatenate(got), want(x), atol=1e-5)
        # Ended everywhere: continuing it on the other replica is refused.
        with pytest.raises(grpc.RpcError) as refused:
            on_b.ModelInfer(_request(x[:1], 77))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
