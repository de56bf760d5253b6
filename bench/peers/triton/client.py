"""Load-generator adapter for Triton: one sequence per bidi ``ModelStreamInfer`` stream.

The driver is ``bench.kserve.KServeDriver`` (one Triton sequence per stream, ``x [1, k, F]``
in and ``y [1, k, O]`` out as raw FP32), with the messages of ``rnnstream.kserve``.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from bench.kserve import KServeDriver
from bench.peers._client import PeerProtocol
from rnnstream.loadgen import LoadSpec, StreamDriver


class TritonProtocol(PeerProtocol):
    """Triton's KServe-v2 streaming API with the sequence batcher's parameters."""

    name = "triton"
    # rnnstream.kserve holds the same messages (Triton's own proto): one set per process.
    stubs_module = "rnnstream.kserve.grpc_service_pb2"

    def manifest_path(self) -> Path:
        """The manifest serve.py copied into Triton's repository."""
        return self.peer / "repo" / self.model / "1" / "manifest.json"

    def driver(self, channel: grpc.aio.Channel, spec: LoadSpec, index: int) -> StreamDriver:
        """One sequence (the same driver as rnnstream's own KServe v2 stream)."""
        expected = 4 * spec.steps_per_message * self.n_outputs
        return KServeDriver(channel, self.pb, self.model, self.n_features, expected, spec, index)
