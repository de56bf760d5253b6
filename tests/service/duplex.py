"""A lock-step bidi stream for tests: send one request, read the answers as they come."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from typing import cast

import numpy as np

from rnnstream.v1 import rnnstream_pb2 as pb
from rnnstream.v1 import rnnstream_pb2_grpc as pb_grpc

_CLOSE = object()


class Duplex:
    """Drive Predictor.Stream message by message from synchronous test code."""

    def __init__(self, stub: pb_grpc.PredictorStub, timeout: float = 30.0) -> None:
        self._requests: queue.Queue[object] = queue.Queue()
        self.call = stub.Stream(self._iterate(), timeout=timeout)

    def _iterate(self) -> Iterator[pb.StreamRequest]:
        # Waking now and then: a call that ended (its server stopped, the test moved on
        # without closing it) lets its sending thread go, rather than leave grpc objects
        # of a finished test to be collected under a blocked thread.
        while True:
            try:
                item = self._requests.get(timeout=0.2)
            except queue.Empty:
                call = getattr(self, "call", None)
                if call is not None and call.done():
                    return
                continue
            if item is _CLOSE:
                return
            assert isinstance(item, pb.StreamRequest)
            yield item

    def send(self, request: pb.StreamRequest) -> None:
        self._requests.put(request)

    def recv(self) -> pb.StreamResponse:
        return next(cast(Iterator[pb.StreamResponse], self.call))

    def ask(self, request: pb.StreamRequest) -> pb.StreamResponse:
        self.send(request)
        return self.recv()

    def open(self, **kwargs: object) -> pb.Opened:
        response = self.ask(pb.StreamRequest(open=pb.Open(**kwargs)))  # type: ignore[arg-type]
        assert response.WhichOneof("kind") == "opened", response
        return response.opened

    def steps(self, start: int, x: np.ndarray) -> pb.Outputs:
        response = self.ask(steps_msg(start, x))
        assert response.WhichOneof("kind") == "outputs", response
        return response.outputs

    def end(self, reset: bool = False, close: bool = False) -> pb.Final:
        response = self.ask(pb.StreamRequest(end=pb.End(reset=reset, close=close)))
        assert response.WhichOneof("kind") == "final", response
        return response.final

    def half_close(self) -> list[pb.StreamResponse]:
        self._requests.put(_CLOSE)
        return list(self.call)

    def cancel(self) -> None:
        self.call.cancel()
        self._requests.put(_CLOSE)


def steps_msg(start: int, x: np.ndarray) -> pb.StreamRequest:
    return pb.StreamRequest(
        steps=pb.Steps(start=start, x=np.asarray(x, np.float32).ravel().tolist())
    )


def outputs_y(outputs: pb.Outputs, n_outputs: int) -> np.ndarray:
    return np.array(outputs.y, dtype=np.float32).reshape(-1, n_outputs)
