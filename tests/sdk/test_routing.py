"""Ids that route, storms at Open and restores after a crash, against a stand-in Predictor.

The stand-in on 127.0.0.1 records every call's metadata, every Open and every Steps'
start, refuses Opens or Steps on request, can report a ``durable_step`` and come back at
an older step (a restore after a crash), and answers each step with the sum of its
features; it needs no model.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent import futures

import grpc
import numpy as np
import pytest

import rnnstream
from rnnstream.v1 import rnnstream_pb2 as pb
from rnnstream.v1 import rnnstream_pb2_grpc as pb_grpc

INFO = pb.ModelInfo(name="m", version="1", n_features=2, n_outputs=1, state_size=3)
ROUTING_KEY = "x-rnnstream-session"


class StandIn(pb_grpc.PredictorServicer):
    """A Predictor that records calls; ``refuse_opens`` / ``fail_steps`` inject failures."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[str, dict[str, str]]] = []  # (method, metadata)
        self.opens: list[pb.Open] = []
        self.refuse_opens = 0  # refuse this many Opens RESOURCE_EXHAUSTED, as a shedding core
        self.fail_steps: grpc.StatusCode | None = None  # fail the next Steps with this code
        self.next_step = 0
        self.durable_step: int | None = None  # reported in Opened and Outputs when set
        self.starts: list[int] = []  # Steps.start of every Steps applied

    def _record(self, method: str, context: grpc.ServicerContext) -> None:
        with self.lock:
            self.calls.append((method, {k: str(v) for k, v in context.invocation_metadata()}))

    def Stream(self, request_iterator, context):  # noqa: N802 (the gRPC method's name)
        self._record("Stream", context)
        open_ = next(request_iterator).open
        with self.lock:
            self.opens.append(open_)
            refuse, self.refuse_opens = self.refuse_opens > 0, max(self.refuse_opens - 1, 0)
        if refuse:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many pending requests")
        yield pb.StreamResponse(
            opened=pb.Opened(
                session_id=open_.session_id,
                model=INFO,
                next_step=self.next_step,
                return_sequences=True,
                durable_step=self.durable_step,
            )
        )
        for request in request_iterator:
            if request.HasField("steps"):
                code, self.fail_steps = self.fail_steps, None
                if code is not None:
                    context.abort(code, "injected")
                x = list(request.steps.x)
                y = [a + b for a, b in zip(x[::2], x[1::2], strict=True)]
                self.starts.append(request.steps.start)
                self.next_step = request.steps.start + len(y)
                outputs = pb.Outputs(start=request.steps.start, y=y, durable_step=self.durable_step)
                yield pb.StreamResponse(outputs=outputs)

    def ListModels(self, request, context):  # noqa: N802
        return pb.ListModelsResponse(models=[INFO], default_model=INFO.name)

    def Predict(self, request, context):  # noqa: N802
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in the stand-in")

    def GetSession(self, request, context):  # noqa: N802
        self._record("GetSession", context)
        return pb.SessionInfo(session_id=request.session_id, next_step=self.next_step)

    def DeleteSession(self, request, context):  # noqa: N802
        self._record("DeleteSession", context)
        return pb.DeleteSessionResponse(deleted=True)


@pytest.fixture
def stand_in() -> Iterator[tuple[StandIn, str]]:
    servicer = StandIn()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_PredictorServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        server.stop(None)


def client_for(address: str, max_retries: int = 5) -> rnnstream.Client:
    return rnnstream.Client(address, timeout=10, max_retries=max_retries, backoff=0.001)


def test_every_stream_and_session_call_carries_the_session_id(stand_in):
    servicer, address = stand_in
    with client_for(address) as client:
        with client.session() as s:
            s.step([0.0, 1.0])
        assert len(s.id) == 22
        client.get_session(s.id)
        client.delete_session(s.id)
    assert [method for method, _ in servicer.calls] == ["Stream", "GetSession", "DeleteSession"]
    assert all(metadata[ROUTING_KEY] == s.id for _, metadata in servicer.calls)
    assert servicer.opens[0].session_id == s.id and servicer.opens[0].create


def test_a_reconnect_resumes_without_create(stand_in):
    servicer, address = stand_in
    with client_for(address) as client, client.session() as s:
        s.step([0.0, 1.0])
        servicer.fail_steps = grpc.StatusCode.UNAVAILABLE
        s.step([0.0, 1.0])  # fails, reconnects, resends
        assert s.reconnects == 1
    assert [(o.session_id, o.create) for o in servicer.opens] == [(s.id, True), (s.id, False)]
    assert [metadata[ROUTING_KEY] for _, metadata in servicer.calls] == [s.id, s.id]


def test_opens_shed_with_resource_exhausted_are_retried(stand_in):
    servicer, address = stand_in
    servicer.refuse_opens = 3
    with client_for(address, max_retries=5) as client, client.session() as s:
        assert s.step([0.0, 1.0]).shape == (1,)
    assert len(servicer.opens) == 4 and {o.session_id for o in servicer.opens} == {s.id}
    assert all(o.create for o in servicer.opens)  # never opened yet: still creating


def test_resource_exhausted_after_opened_is_not_retried(stand_in):
    servicer, address = stand_in
    with client_for(address) as client, client.session() as s:
        servicer.fail_steps = grpc.StatusCode.RESOURCE_EXHAUSTED
        with pytest.raises(rnnstream.ResourceExhaustedError):
            s.step([0.0, 1.0])
    assert len(servicer.opens) == 1


def test_shedding_past_the_retries_raises(stand_in):
    servicer, address = stand_in
    servicer.refuse_opens = 10
    with (
        client_for(address, max_retries=2) as client,
        pytest.raises(rnnstream.ResourceExhaustedError),
    ):
        client.session()
    assert len(servicer.opens) == 3


def test_the_asyncio_client_routes_and_retries_alike(stand_in):
    servicer, address = stand_in
    servicer.refuse_opens = 2

    async def run() -> str:
        async with rnnstream.AsyncClient(address, timeout=10, backoff=0.001) as client:
            async with client.session() as s:
                await s.step([0.0, 1.0])
            await client.get_session(s.id)
            return s.id

    session_id = asyncio.run(run())
    assert [o.create for o in servicer.opens] == [True, True, True]
    assert [method for method, _ in servicer.calls] == ["Stream"] * 3 + ["GetSession"]
    assert all(metadata[ROUTING_KEY] == session_id for _, metadata in servicer.calls)


def test_a_restore_from_an_older_step_after_a_crash_loses_and_repeats_nothing(stand_in):
    servicer, address = stand_in
    servicer.durable_step = 0
    x = np.arange(24, dtype=np.float32).reshape(12, 2)
    sums = x.sum(axis=1)
    with client_for(address) as client, client.session(chunk_size=4) as s:
        np.testing.assert_array_equal(s.steps(x[:8]), sums[:8, None])
        servicer.durable_step = 4  # the store caught up to step 4
        np.testing.assert_array_equal(s.steps(x[8:10]), sums[8:10, None])
        # The server dies; another restores the session from its store, at step 4.
        servicer.next_step, servicer.starts = 4, []
        servicer.fail_steps = grpc.StatusCode.UNAVAILABLE
        y = s.steps(x[10:12])
        assert s.reconnects == 1 and s.next_step == 12
    np.testing.assert_array_equal(y, sums[10:12, None])  # only the new steps' outputs
    assert servicer.starts == [4, 8, 10] and servicer.next_step == 12
