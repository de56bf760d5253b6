"""kserve_mapping without a network: sequence ids, tensors in and out, refusals."""

from __future__ import annotations

import numpy as np
import pytest

from rnnstream._session_id import is_session_id
from rnnstream.kserve import grpc_service_pb2 as kpb
from rnnstream.manifest import Manifest
from rnnstream.server import kserve_mapping as mapping
from rnnstream.server.errors import InvalidArgument, ResourceExhausted


def _manifest(tiny_models) -> Manifest:
    return Manifest.load(tiny_models / "tiny" / "1")


def _request(
    x: np.ndarray, raw: bool = True, datatype: str = "FP32", **params
) -> kpb.ModelInferRequest:
    request = kpb.ModelInferRequest(model_name="tiny", id="r1")
    tensor = request.inputs.add(name="x", datatype=datatype, shape=list(x.shape))
    if raw:
        request.raw_input_contents.append(x.astype("<f4").tobytes())
    else:
        tensor.contents.fp32_contents.extend(x.ravel().tolist())
    for name, value in params.items():
        if isinstance(value, bool):
            request.parameters[name].bool_param = value
        elif isinstance(value, int):
            request.parameters[name].int64_param = value
        else:
            request.parameters[name].string_param = value
    return request


def test_session_ids_are_deterministic_valid_and_distinct():
    ids = {
        mapping.session_id_for("tiny", 7),
        mapping.session_id_for("tiny", "7"),
        mapping.session_id_for("other", 7),
        mapping.session_id_for("tiny", 2**64 - 1),
        mapping.session_id_for("tiny", "a string id with spaces / and ünïcode"),
    }
    assert len(ids) == 5
    assert all(is_session_id(i) and i.startswith(mapping.SESSION_PREFIX) for i in ids)
    assert mapping.session_id_for("tiny", 7) == mapping.session_id_for("tiny", 7)


def test_sequence_control_reads_triton_parameters():
    x = np.zeros((1, 2), np.float32)
    assert mapping.sequence_control(_request(x)) is None
    assert mapping.sequence_control(_request(x, sequence_id=0)) is None
    control = mapping.sequence_control(_request(x, sequence_id=5, sequence_start=True))
    assert control == mapping.SequenceControl(5, start=True, end=False)
    wrapped = mapping.sequence_control(_request(x, sequence_id=-1, sequence_end=True))
    assert wrapped == mapping.SequenceControl(2**64 - 1, start=False, end=True)
    assert mapping.sequence_control(_request(x, sequence_id="abc")).sequence_id == "abc"
    uint = _request(x)
    uint.parameters["sequence_id"].uint64_param = 2**63 + 1
    assert mapping.sequence_control(uint).sequence_id == 2**63 + 1


@pytest.mark.parametrize(
    "params",
    [
        {"sequence_start": True},  # no id
        {"sequence_id": 3, "sequence_start": 1},  # not a bool
    ],
)
def test_sequence_control_refusals(params):
    with pytest.raises(InvalidArgument):
        mapping.sequence_control(_request(np.zeros((1, 2), np.float32), **params))


def test_double_sequence_id_is_refused():
    request = _request(np.zeros((1, 2), np.float32))
    request.parameters["sequence_id"].double_param = 1.5
    with pytest.raises(InvalidArgument, match="uint64"):
        mapping.sequence_control(request)


@pytest.mark.parametrize("raw", [True, False])
@pytest.mark.parametrize("shape", [(4, 2), (1, 4, 2), (3, 4, 2)])
def test_decode_input_shapes_and_encodings(tiny_models, raw, shape):
    x = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    inputs = mapping.decode_input(_request(x, raw=raw), _manifest(tiny_models), 1000)
    assert inputs.batched == (len(shape) == 3)
    np.testing.assert_array_equal(inputs.x, x.reshape(-1, 4, 2))


def test_infer_response_is_raw_fp32_shaped_like_the_request(tiny_models):
    y = np.arange(12, dtype=np.float32).reshape(1, 4, 3)
    request = _request(np.zeros((4, 2), np.float32))
    response = mapping.infer_response(request, _manifest(tiny_models), y, batched=False)
    assert response.id == "r1" and response.model_name == "tiny"
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("y", "FP32", [4, 3])
    ]
    np.testing.assert_array_equal(np.frombuffer(response.raw_output_contents[0], "<f4"), y.ravel())


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda r: setattr(r.inputs[0], "datatype", "FP64"), "data-type is 'FP64'"),
        (lambda r: r.inputs[0].shape.__setitem__(1, 3), "shape"),
        (lambda r: r.inputs[0].shape.pop(), "shape"),
        (lambda r: setattr(r.inputs[0], "name", "z"), "one input"),
        (lambda r: r.raw_input_contents.__setitem__(0, b"\0" * 4), "bytes"),
        (lambda r: r.outputs.add(name="h"), "unexpected inference output"),
        (
            lambda r: r.raw_input_contents.__setitem__(
                0, np.array([[np.nan, 0], [0, 0]], "<f4").tobytes()
            ),
            "non-finite",
        ),
    ],
)
def test_decode_input_refusals(tiny_models, change, match):
    request = _request(np.zeros((2, 2), np.float32))
    change(request)
    with pytest.raises(InvalidArgument, match=match):
        mapping.decode_input(request, _manifest(tiny_models), 1000)


def test_decode_input_step_limit(tiny_models):
    with pytest.raises(ResourceExhausted):
        mapping.decode_input(_request(np.zeros((5, 2), np.float32)), _manifest(tiny_models), 4)


def test_metadata_and_config_describe_the_tensors(tiny_models):
    manifest = _manifest(tiny_models)
    metadata = mapping.model_metadata(manifest, ["1"])
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [
        ("x", "FP32", [-1, 2])
    ]
    assert [(t.name, list(t.shape)) for t in metadata.outputs] == [("y", [-1, 3])]
    config = mapping.model_config(manifest, 60.0)
    assert config.sequence_batching.max_sequence_idle_microseconds == 60_000_000
    assert [list(i.dims) for i in config.input] == [[-1, 2]]
