"""Load-generator adapter for Triton: one sequence per bidi ``ModelStreamInfer`` stream.

Each stream is one Triton sequence (a correlation id): the first request sets
``sequence_start``, the last (sent at close) ``sequence_end``. Each request carries
``x [1, k, F]`` as raw FP32 bytes and expects ``y [1, k, O]`` back. Messages are built
once (start/steady/end variants), like the rnnstream driver's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import numpy as np

from bench.peers._client import PeerProtocol, finish
from rnnstream.loadgen import GRPC_EOF, LoadError, LoadSpec, StreamDriver

METHOD = "/inference.GRPCInferenceService/ModelStreamInfer"


class TritonProtocol(PeerProtocol):
    """Triton's KServe-v2 streaming API with the sequence batcher's parameters."""

    name = "triton"
    stubs_module = "triton_subset_pb2"

    def manifest_path(self) -> Path:
        """The manifest serve.py copied into Triton's repository."""
        return self.peer / "repo" / self.model / "1" / "manifest.json"

    def driver(self, channel: grpc.aio.Channel, spec: LoadSpec, index: int) -> StreamDriver:
        """One sequence."""
        return _TritonDriver(channel, self, spec, index)


class _TritonDriver(StreamDriver):
    def __init__(
        self, channel: grpc.aio.Channel, protocol: TritonProtocol, spec: LoadSpec, index: int
    ) -> None:
        pb = protocol.pb
        self._method = channel.stream_stream(
            METHOD,
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelStreamInferResponse.FromString,
        )
        k, f = spec.steps_per_message, protocol.n_features
        x = np.random.default_rng(index).standard_normal((1, k, f)).astype(np.float32)
        corrid = 1_000_000 + index

        def request(start: bool, end: bool) -> Any:
            message = pb.ModelInferRequest(model_name=protocol.model)
            tensor = message.inputs.add(name="x", datatype="FP32")
            tensor.shape.extend([1, k, f])
            message.raw_input_contents.append(x.tobytes())
            message.parameters["sequence_id"].int64_param = corrid
            if start:
                message.parameters["sequence_start"].bool_param = True
            if end:
                message.parameters["sequence_end"].bool_param = True
            return message

        self._first = request(True, False)
        self._steady = request(False, False)
        self._last = request(False, True)
        self._started = False
        self._expected_bytes = 4 * k * protocol.n_outputs

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
            raise LoadError(f"triton: {message.error_message}")
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
