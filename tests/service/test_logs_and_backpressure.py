"""JSON logs carry session ids; a client that does not read cannot grow the server's memory."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from typing import cast

import grpc
import numpy as np

from rnnstream.server import logs
from rnnstream.server.sessions import SessionManager
from rnnstream.v1 import rnnstream_pb2 as pb
from rnnstream.v1 import rnnstream_pb2_grpc as pb_grpc


def test_json_logs_carry_the_session_id(tiny_models):
    from rnnstream.server.repository import ModelRepository
    from rnnstream.server.settings import Settings

    stream = io.StringIO()
    logs.configure("DEBUG", "json")
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    settings = Settings.from_env({}, models=tiny_models, state_dir="")
    repo = ModelRepository.load(settings)
    try:
        sessions = SessionManager(repo, settings)
        session = sessions.create("tiny", "", None, None)
        sessions.delete(session.id)
    finally:
        repo.close()
        logging.getLogger().handlers.clear()
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    events = {r.get("event"): r for r in records if r.get("session_id") == session.id}
    assert set(events) == {"open", "end"}
    assert events["end"]["reason"] == "deleted" and events["end"]["level"] == "DEBUG"


def test_a_client_that_does_not_read_stalls_its_stream_not_the_server(server):
    """Flow control pushes back: the server stops taking Steps from a stream whose replies
    are not read, so what it holds for that stream stays bounded; reading resumes it."""
    x = np.zeros((2000, 2), np.float32).ravel().tolist()  # 2000 steps: ~24 kB of replies each
    total = 400

    async def main() -> tuple[int, int]:
        # No BDP probing on this side: a client that does not read would otherwise let
        # grpc grow its receive window (to megabytes when the machine is slow).
        options = [("grpc.http2.bdp_probe", 0)]
        async with grpc.aio.insecure_channel(server.address, options=options) as channel:
            stub = pb_grpc.PredictorStub(channel)
            call = stub.Stream()  # type: ignore[call-arg]
            await call.write(pb.StreamRequest(open=pb.Open(model="tiny")))
            opened = cast(pb.StreamResponse, await call.read())
            sent = 0
            try:
                while sent < total:
                    request = pb.StreamRequest(steps=pb.Steps(start=sent * 2000, x=x))
                    await asyncio.wait_for(call.write(request), timeout=2.0)
                    sent += 1
            except TimeoutError:
                pass
            info = await stub.GetSession(pb.GetSessionRequest(session_id=opened.opened.session_id))
            call.cancel()
            return sent, info.next_step

    sent, applied = asyncio.run(main())
    assert sent < total, "the server kept taking messages whose replies nobody read"
    assert applied <= sent * 2000
