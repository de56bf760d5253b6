"""The Stream handler against a stand-in context: how a stream ends while it is writing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np

from rnnstream.server.metrics import Metrics
from rnnstream.server.repository import ModelRepository
from rnnstream.server.servicer import PredictorServicer
from rnnstream.server.sessions import SessionManager
from rnnstream.server.settings import Settings
from rnnstream.v1 import rnnstream_pb2 as pb

_EOF = object()


class SlowWriteContext:
    """A ServicerContext whose writes wait at a gate while ``gate`` is closed.

    ``passes`` lets that many writes through a closed gate, one at a time (``release``).
    """

    def __init__(self) -> None:
        self.requests: asyncio.Queue[object] = asyncio.Queue()
        self.written: list[pb.StreamResponse] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.waiting_at_gate = asyncio.Event()
        self.passes = 0
        self.released = asyncio.Event()
        self.finished = False
        self.ended_cancelled = False
        self.aborted: tuple[object, str] | None = None

    def release_one(self) -> None:
        """Let the write waiting at the closed gate through; the next one waits again."""
        self.passes += 1
        self.released.set()

    async def read(self) -> object:
        return await self.requests.get()

    async def write(self, message: pb.StreamResponse | bytes) -> None:
        while not self.gate.is_set() and not self.passes:
            self.waiting_at_gate.set()
            self.released.clear()
            await asyncio.wait(
                [asyncio.ensure_future(e.wait()) for e in (self.gate, self.released)],
                return_when=asyncio.FIRST_COMPLETED,
            )
        if not self.gate.is_set():
            self.passes -= 1
        if isinstance(message, bytes):
            message = pb.StreamResponse.FromString(message)
        self.written.append(message)

    def cancelled(self) -> bool:
        return False

    async def abort(self, code: object, details: str) -> None:
        self.aborted = (code, details)
        raise grpc.aio.AbortError()


def _end_stream(
    tiny_models: Path,
    write_takes_s: float | None,
    then_stuck: bool = False,
    write_grace_s: float = 5.0,
    mid_write: bool = True,
) -> SlowWriteContext:
    """Open, then step; delete the session while the reply's write waits ``write_takes_s``
    (None: forever, a client that stopped reading). ``mid_write`` False: delete it while
    the stream reads, with every write hanging from then on. Returns the context once the
    handler ended (or 10 s passed).
    """
    settings = Settings.from_env({}, models=tiny_models, state_dir="", write_grace_s=write_grace_s)
    repository = ModelRepository.load(settings)
    sessions = SessionManager(repository, settings)
    servicer = PredictorServicer(repository, sessions, settings, Metrics(sessions))

    async def drive() -> SlowWriteContext:
        context = SlowWriteContext()
        task = asyncio.create_task(servicer.Stream(None, context))  # type: ignore[arg-type]
        await context.requests.put(pb.StreamRequest(open=pb.Open(model="tiny")))
        while not context.written:
            await asyncio.sleep(0.01)
        session_id = context.written[0].opened.session_id
        context.gate.clear()  # the next reply's write hangs, as on a slow network
        if mid_write:
            x = np.ones(2, np.float32).tolist()
            await context.requests.put(pb.StreamRequest(steps=pb.Steps(start=0, x=x)))
            await asyncio.wait_for(context.waiting_at_gate.wait(), 10)
        assert sessions.delete(session_id)  # ends the stream (in the middle of that write)
        if write_takes_s is not None:
            await asyncio.sleep(write_takes_s)
            if then_stuck:
                context.release_one()  # that write ends in time; the next one never does
            else:
                context.gate.set()
        await asyncio.wait({task}, timeout=10)
        context.finished = task.done()
        context.ended_cancelled = task.cancelled()
        return context

    try:
        return asyncio.run(drive())
    finally:
        repository.close()


def test_a_stream_ended_while_writing_still_tells_its_client_why(tiny_models: Path):
    context = _end_stream(tiny_models, write_takes_s=0.05)
    written = context.written
    assert not context.ended_cancelled
    kinds = [m.WhichOneof("kind") for m in written]
    assert kinds == ["opened", "outputs", "ended"]  # the reply in flight, then why it ended
    assert written[2].ended.reason == pb.END_REASON_DELETED


def test_a_write_stuck_past_the_grace_is_cut_off_with_a_status_saying_why(tiny_models: Path):
    context = _end_stream(tiny_models, write_takes_s=None, write_grace_s=0.2)
    assert context.finished and not context.ended_cancelled  # it ended by itself
    assert [m.WhichOneof("kind") for m in context.written] == ["opened"]  # nothing more
    assert context.aborted == (
        grpc.StatusCode.UNAVAILABLE,
        "the session was deleted (DeleteSession)",
    )  # the status, queued behind the undelivered reply, says why


def test_a_write_that_ends_in_time_is_not_cut_off_later(tiny_models: Path):
    """The grace timer of a write that finished is cancelled: it must not cut into the
    SessionEnded write (bounded by its own grace) that follows."""
    context = _end_stream(tiny_models, write_takes_s=0.15, then_stuck=True, write_grace_s=0.3)
    assert context.finished and not context.ended_cancelled and context.aborted is None
    assert [m.WhichOneof("kind") for m in context.written] == ["opened", "outputs"]


def test_the_reason_is_not_waited_for_forever_by_a_client_that_does_not_read(
    tiny_models: Path,
):
    context = _end_stream(tiny_models, write_takes_s=None, write_grace_s=0.2, mid_write=False)
    assert context.finished  # the SessionEnded write was given up after the grace
    assert [m.WhichOneof("kind") for m in context.written] == ["opened"]
