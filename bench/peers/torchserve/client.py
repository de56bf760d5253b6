"""Load-generator adapter for TorchServe: one sequence per bidi ``StreamPredictions2`` stream.

Every request of a stream carries the same ``sequence_id`` (TorchServe's sequence batching
routes it to the handler's state for that id) and ``x [k, F]`` as raw float32 bytes under
"data"; the reply's ``prediction`` is ``y [k, O]`` as raw float32 bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import numpy as np

from bench.peers._client import PeerProtocol, finish
from rnnstream.loadgen import GRPC_EOF, LoadError, LoadSpec, StreamDriver

METHOD = "/org.pytorch.serve.grpc.inference.InferenceAPIsService/StreamPredictions2"


class TorchServeProtocol(PeerProtocol):
    """TorchServe's gRPC StreamPredictions2 with a sequence id per stream."""

    name = "torchserve"
    stubs_module = "torchserve_subset_pb2"

    def manifest_path(self) -> Path:
        """The manifest serve.py left in the model store."""
        return self.peer / "store" / "manifest.json"

    def driver(self, channel: grpc.aio.Channel, spec: LoadSpec, index: int) -> StreamDriver:
        """One sequence."""
        return _TorchServeDriver(channel, self, spec, index)


class _TorchServeDriver(StreamDriver):
    def __init__(
        self, channel: grpc.aio.Channel, protocol: TorchServeProtocol, spec: LoadSpec, index: int
    ) -> None:
        pb = protocol.pb
        self._method = channel.stream_stream(
            METHOD,
            request_serializer=pb.PredictionsRequest.SerializeToString,
            response_deserializer=pb.PredictionResponse.FromString,
        )
        k, f = spec.steps_per_message, protocol.n_features
        x = np.random.default_rng(index).standard_normal((k, f)).astype(np.float32)
        self._request = pb.PredictionsRequest(
            model_name=protocol.model,
            input={"data": x.tobytes()},
            sequence_id=f"bench-{index}-{id(self):x}",
        )
        self._expected_bytes = 4 * k * protocol.n_outputs

    async def open(self) -> None:
        self.call = self._method()  # type: ignore[call-arg]  # aio: no request iterator

    def request(self) -> object:
        return self._request

    def check(self, response: object) -> None:
        if response is GRPC_EOF:
            raise LoadError("the stream ended")
        message: Any = response
        if message.HasField("status") and message.status.code != 0:
            raise LoadError(f"torchserve: {message.status.code} {message.status.message}")
        if len(message.prediction) != self._expected_bytes:
            raise LoadError(
                f"expected {self._expected_bytes} bytes of y, got {len(message.prediction)}: "
                f"{bytes(message.prediction[:200])!r}"
            )

    async def close(self) -> None:
        await finish(self.call)
