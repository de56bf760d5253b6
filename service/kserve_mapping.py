"""KServe v2 (Triton) messages <-> rnnstream's domain: tensors, sequences, model descriptions.

Plain functions over the generated messages, tested without a network:

- Tensors: the one input ``x`` is FP32 ``[T, F]`` (one sequence) or ``[N, T, F]``, sent as
  ``raw_input_contents`` (what tritonclient sends) or ``contents.fp32_contents``; the one
  output ``y`` is FP32 and always returned raw, shaped like the input with ``F`` replaced
  by ``O`` (``[T, O]``, ``[N, T, O]``), or without ``T`` for a model that answers at the
  last step only (``[O]``, ``[N, O]``).
- Sequences: the request parameters ``sequence_id`` (a uint64, or a string),
  ``sequence_start`` and ``sequence_end`` name an rnnstream session. The session id is
  derived from the model name and the sequence id alone (``session_id_for``), so every
  worker, and a client that wants the native API's view, finds the same session.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from rnnstream.kserve import grpc_service_pb2 as kpb
from rnnstream.kserve import model_config_pb2 as mpb
from rnnstream.manifest import Manifest
from rnnstream.server import codec
from rnnstream.server.errors import InvalidArgument

INPUT = "x"
OUTPUT = "y"
DATATYPE = "FP32"
PLATFORM = "rnnstream_onnxruntime"
_UINT64 = (1 << 64) - 1
# Session ids made here start with this (and are 36 characters long): within the rule.
SESSION_PREFIX = "kv2-"

SequenceId = int | str


@dataclass(frozen=True)
class SequenceControl:
    """A request's sequence parameters: which sequence, and whether it starts or ends."""

    sequence_id: SequenceId
    start: bool
    end: bool


def sequence_control(request: kpb.ModelInferRequest) -> SequenceControl | None:
    """The request's sequence parameters; None for a request outside any sequence.

    A ``sequence_id`` of 0 or "" (or none) means no sequence, as in Triton; an int64 id is
    read as the uint64 with the same bits, as Triton does.
    """
    parameters = request.parameters
    sequence_id = _sequence_id(parameters["sequence_id"]) if "sequence_id" in parameters else 0
    start = _flag(parameters, "sequence_start")
    end = _flag(parameters, "sequence_end")
    if sequence_id in (0, ""):
        if start or end:
            raise InvalidArgument(
                "sequence_start or sequence_end is set without a sequence_id: set "
                "sequence_id to a non-zero uint64 or a non-empty string"
            )
        return None
    return SequenceControl(sequence_id, start, end)


def _sequence_id(parameter: kpb.InferParameter) -> SequenceId:
    kind = parameter.WhichOneof("parameter_choice")
    if kind == "uint64_param":
        return int(parameter.uint64_param)
    if kind == "int64_param":
        return int(parameter.int64_param) & _UINT64
    if kind == "string_param":
        return str(parameter.string_param)
    raise InvalidArgument(
        f"parameter sequence_id is a {kind or 'empty parameter'}: send a uint64 "
        "(int64_param or uint64_param) or a string (string_param)"
    )


def _flag(parameters: Mapping[str, kpb.InferParameter], name: str) -> bool:
    """A bool request parameter (absent: false)."""
    parameter = parameters.get(name)
    if parameter is None:
        return False
    kind = parameter.WhichOneof("parameter_choice")
    if kind not in (None, "bool_param"):
        raise InvalidArgument(f"parameter {name} is a {kind}: send a bool_param")
    return bool(parameter.bool_param)


def session_id_for(model_name: str, sequence_id: SequenceId) -> str:
    """The rnnstream session id of sequence ``sequence_id`` of model ``model_name``.

    Deterministic (every worker derives the same id), within the session-id rule
    (``kv2-`` and 32 URL-safe characters), and distinct per model and per id type: the
    uint64 7 and the string "7" are different sequences, as in Triton.
    """
    kind = "u" if isinstance(sequence_id, int) else "s"
    digest = hashlib.sha256(f"{model_name}\0{kind}\0{sequence_id}".encode()).digest()
    return SESSION_PREFIX + base64.urlsafe_b64encode(digest[:24]).decode("ascii")


@dataclass(frozen=True)
class Inputs:
    """The decoded ``x``: ``[N, T, F]`` float32, and whether the request left out ``N``."""

    x: np.ndarray
    batched: bool


def decode_input(request: kpb.ModelInferRequest, manifest: Manifest, max_steps: int) -> Inputs:
    """The request's ``x`` as ``[N, T, F]`` float32, checked like the native API's steps."""
    model = manifest.name
    f = manifest.n_features
    for output in request.outputs:
        if output.name != OUTPUT:
            raise InvalidArgument(
                f"unexpected inference output {output.name!r} for model {model!r}: "
                f"it has one output, {OUTPUT!r}"
            )
    if len(request.inputs) != 1 or request.inputs[0].name != INPUT:
        names = ", ".join(repr(t.name) for t in request.inputs) or "none"
        raise InvalidArgument(
            f"model {model!r} takes one input, {INPUT!r} ({DATATYPE} [T, {f}]); got {names}"
        )
    tensor = request.inputs[0]
    if tensor.datatype != DATATYPE:
        raise InvalidArgument(
            f"inference input {INPUT!r} data-type is {tensor.datatype!r}, but model "
            f"{model!r} expects {DATATYPE!r}"
        )
    shape = [int(d) for d in tensor.shape]
    if len(shape) not in (2, 3) or shape[-1] != f or any(d < 1 for d in shape):
        raise InvalidArgument(
            f"inference input {INPUT!r} has shape {shape}, but model {model!r} expects "
            f"[T, {f}] or [N, T, {f}] (T, N >= 1)"
        )
    count = int(np.prod(shape))
    if request.raw_input_contents:
        if len(request.raw_input_contents) != 1:
            raise InvalidArgument(
                f"{len(request.raw_input_contents)} raw_input_contents for one input: "
                "send one per input"
            )
        raw = request.raw_input_contents[0]
        if len(raw) != 4 * count:
            raise InvalidArgument(
                f"raw_input_contents of {INPUT!r} holds {len(raw)} bytes, but shape {shape} "
                f"of {DATATYPE} takes {4 * count}"
            )
        values = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    else:
        values = np.asarray(tensor.contents.fp32_contents, dtype=np.float32)
        if values.size != count:
            raise InvalidArgument(
                f"contents of {INPUT!r} holds {values.size} fp32 values, but shape {shape} "
                f"takes {count}"
            )
    steps = codec.decode_steps(values, manifest, max_steps, f"input {INPUT!r}")
    return Inputs(steps.reshape(shape[0] if len(shape) == 3 else 1, -1, f), len(shape) == 3)


def infer_response(
    request: kpb.ModelInferRequest, manifest: Manifest, y: np.ndarray, batched: bool
) -> kpb.ModelInferResponse:
    """``y`` (``[N, T, O]`` or ``[N, O]``) as the answer to ``request``, raw FP32.

    Without ``batched`` the leading ``N`` (1) is left out, as the request left it out.
    """
    if not batched:
        y = y[0]
    response = kpb.ModelInferResponse(
        model_name=manifest.name, model_version=manifest.version, id=request.id
    )
    response.outputs.add(name=OUTPUT, datatype=DATATYPE, shape=list(y.shape))
    response.raw_output_contents.append(np.ascontiguousarray(y, dtype="<f4").tobytes())
    return response


def _output_dims(manifest: Manifest) -> list[int]:
    return [-1, manifest.n_outputs] if manifest.return_sequences else [manifest.n_outputs]


def model_metadata(manifest: Manifest, versions: list[str]) -> kpb.ModelMetadataResponse:
    """ModelMetadata: ``x`` FP32 ``[-1, F]`` in, ``y`` FP32 ``[-1, O]`` (or ``[O]``) out."""
    tensor = kpb.ModelMetadataResponse.TensorMetadata
    return kpb.ModelMetadataResponse(
        name=manifest.name,
        versions=versions,
        platform=PLATFORM,
        inputs=[tensor(name=INPUT, datatype=DATATYPE, shape=[-1, manifest.n_features])],
        outputs=[tensor(name=OUTPUT, datatype=DATATYPE, shape=_output_dims(manifest))],
    )


def model_config(manifest: Manifest, idle_ttl_s: float) -> mpb.ModelConfig:
    """ModelConfig as far as clients read it: tensors, no batching, a sequence model."""
    return mpb.ModelConfig(
        name=manifest.name,
        platform=PLATFORM,
        max_batch_size=0,
        input=[mpb.ModelInput(name=INPUT, data_type=mpb.TYPE_FP32, dims=[-1, manifest.n_features])],
        output=[mpb.ModelOutput(name=OUTPUT, data_type=mpb.TYPE_FP32, dims=_output_dims(manifest))],
        sequence_batching=mpb.ModelSequenceBatching(
            max_sequence_idle_microseconds=int(idle_ttl_s * 1_000_000)
        ),
    )
