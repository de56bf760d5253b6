"""Load through the KServe v2 / Triton gRPC stream: one sequence per ``ModelStreamInfer``.

``KServeProtocol`` drives rnnstream's own ``inference.GRPCInferenceService`` (the harness
system ``rnnstream-kserve``: the same server as ``rnnstream``, reached over the second
protocol); ``KServeDriver`` is also what drives Triton itself (``bench.peers.triton``),
with that peer's generated module.

Each stream is one sequence (a sequence id): the first request sets ``sequence_start``,
the last (sent at close) ``sequence_end``. Each request carries ``x [1, k, F]`` as raw
FP32 bytes and expects ``y`` back as one raw tensor. Messages are built once
(start/steady/end variants), like the native driver's.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import grpc
import numpy as np

from bench.peers._client import finish
from rnnstream.kserve import grpc_service_pb2 as kpb
from rnnstream.kserve import grpc_service_pb2_grpc as kpb_grpc
from rnnstream.loadgen import GRPC_EOF, LoadError, LoadSpec, StreamDriver, StreamProtocol

METHOD = "/inference.GRPCInferenceService/ModelStreamInfer"
FIRST_SEQUENCE_ID = 1_000_000


class KServeProtocol(StreamProtocol):
    """rnnstream's KServe v2 stream, with Triton's sequence parameters."""

    name = "rnnstream-kserve"

    def __init__(self) -> None:
        self.model = ""
        self.output_bytes_per_step = 0
        self.output_bytes_fixed = 0

    async def prepare(self, channel: grpc.aio.Channel, spec: LoadSpec) -> None:
        """ModelMetadata: the model (empty: the server's default) and its widths."""
        stub = kpb_grpc.GRPCInferenceServiceStub(channel)
        try:
            metadata = await stub.ModelMetadata(
                kpb.ModelMetadataRequest(name=spec.model),
                timeout=spec.timeout_s,
                wait_for_ready=True,
            )
        except grpc.aio.AioRpcError as exc:
            raise LoadError(f"ModelMetadata at {spec.target}: {exc.details()}") from exc
        self.model = metadata.name
        self.n_features = int(metadata.inputs[0].shape[-1])
        output_shape = list(metadata.outputs[0].shape)
        self.n_outputs = int(output_shape[-1])
        # [-1, O]: O values per step sent; [O]: O values per message (the last step's).
        self.output_bytes_per_step = 4 * self.n_outputs if len(output_shape) == 2 else 0
        self.output_bytes_fixed = 0 if len(output_shape) == 2 else 4 * self.n_outputs

    def driver(self, channel: grpc.aio.Channel, spec: LoadSpec, index: int) -> StreamDriver:
        """One sequence."""
        k = spec.steps_per_message
        expected = self.output_bytes_per_step * k + self.output_bytes_fixed
        return KServeDriver(channel, kpb, self.model, self.n_features, expected, spec, index)


class KServeDriver(StreamDriver):
    """One sequence over one ``ModelStreamInfer`` stream, with the messages of ``pb``."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        pb: ModuleType,
        model: str,
        n_features: int,
        expected_bytes: int,
        spec: LoadSpec,
        index: int,
    ) -> None:
        self._method = channel.stream_stream(
            METHOD,
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelStreamInferResponse.FromString,
        )
        k = spec.steps_per_message
        x = np.random.default_rng(index).standard_normal((1, k, n_features)).astype(np.float32)
        sequence_id = FIRST_SEQUENCE_ID + index

        def request(start: bool, end: bool) -> Any:
            message = pb.ModelInferRequest(model_name=model)
            tensor = message.inputs.add(name="x", datatype="FP32")
            tensor.shape.extend([1, k, n_features])
            message.raw_input_contents.append(x.tobytes())
            message.parameters["sequence_id"].int64_param = sequence_id
            if start:
                message.parameters["sequence_start"].bool_param = True
            if end:
                message.parameters["sequence_end"].bool_param = True
            return message

        self._first = request(True, False)
        self._steady = request(False, False)
        self._last = request(False, True)
        self._started = False
        self._expected_bytes = expected_bytes

    async def open(self) -> None:
        self.call = self._method()  # type: ignore[call-arg]  # aio: no request iterator

    def request(self) -> object:
        if self._started:
            return self._steady
        self._started = True
        return self._first

    def check(self, response: object) -> None:
        if response is GRPC_EOF:
            raise LoadError("the stream ended")
        message: Any = response
        if message.error_message:
            raise LoadError(f"kserve: {message.error_message}")
        raw = message.infer_response.raw_output_contents
        if len(raw) != 1 or len(raw[0]) != self._expected_bytes:
            raise LoadError(
                f"expected {self._expected_bytes} bytes of y, got {[len(r) for r in raw]}"
            )

    async def close(self) -> None:
        if self._started:
            await self.call.write(self._last)
            await self.call.read()
        await finish(self.call)
