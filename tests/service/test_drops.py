"""Drop + resume + resend, many times over: outputs identical to an uninterrupted run.

20 concurrent sessions stream pipelined messages of random sizes; 200 times in all a
client drops its stream with messages unacknowledged, reopens the session by id, and
resends everything from the first step it has no output for (some of which the server
already applied: retransmissions). Every step's output must arrive and equal the
reference, and the server must have applied each step exactly once.
"""

from __future__ import annotations

import asyncio
import random
from typing import cast

import grpc
import numpy as np

from rnnstream.v1 import rnnstream_pb2 as pb
from rnnstream.v1 import rnnstream_pb2_grpc as pb_grpc
from tests.conftest import TINY

SESSIONS = 20
DROPS_PER_SESSION = 10
T = 80


async def drive_session(
    stub: pb_grpc.PredictorAsyncStub, x: np.ndarray, rng: random.Random
) -> tuple[str, np.ndarray, int]:
    """Stream x through one session, dropping the stream DROPS_PER_SESSION times."""
    y = np.full((T, 3), np.nan, dtype=np.float32)
    session_id = ""
    drops_left = DROPS_PER_SESSION
    retransmitted = 0
    while True:
        call = stub.Stream()  # type: ignore[call-arg]  # read/write style
        await call.write(pb.StreamRequest(open=pb.Open(model="tiny", session_id=session_id)))
        opened = cast(pb.StreamResponse, await call.read()).opened
        session_id = opened.session_id
        acked = int(np.argmax(np.isnan(y[:, 0]))) if np.isnan(y[:, 0]).any() else T
        assert opened.next_step >= acked  # the server never forgets an acknowledged step
        start = acked  # resend everything without an output, retransmissions included
        retransmitted += opened.next_step - start
        drop_after = rng.randint(1, 4) if drops_left else None
        sent = 0
        pending = 0
        while start < T:
            n = rng.randint(1, 7)
            await call.write(
                pb.StreamRequest(
                    steps=pb.Steps(start=start, x=x[start : start + n].ravel().tolist())
                )
            )
            start = min(T, start + n)
            sent += 1
            pending += 1
            if drop_after is not None and sent == drop_after:
                break
            if pending == 3 or start == T:  # pipelined: up to 3 messages in flight
                while pending:
                    out = cast(pb.StreamResponse, await call.read()).outputs
                    rows = np.array(out.y, dtype=np.float32).reshape(-1, 3)
                    seen = y[out.start : out.start + len(rows)]
                    known = ~np.isnan(seen[:, 0])
                    np.testing.assert_array_equal(seen[known], rows[known])  # replies agree
                    y[out.start : out.start + len(rows)] = rows
                    pending -= 1
        if drop_after is not None and sent == drop_after:
            if rng.random() < 0.5:  # sometimes read one answer before dropping
                await call.read()
            call.cancel()
            drops_left -= 1
            continue
        await call.done_writing()
        while await call.read() is not grpc.aio.EOF:  # type: ignore[attr-defined]  # the Final of the half-close
            pass
        return session_id, y, retransmitted


def test_200_random_drops_across_20_sessions_lose_and_double_nothing(server):
    rng = np.random.default_rng(123)
    xs = rng.standard_normal((SESSIONS, T, 2)).astype(np.float32)
    want, _ = TINY.run(xs)

    async def main() -> list[tuple[str, np.ndarray, int]]:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.PredictorStub(channel)
            results = await asyncio.gather(
                *(drive_session(stub, xs[i], random.Random(i)) for i in range(SESSIONS))
            )
            for session_id, _, _ in results:
                info = await stub.GetSession(pb.GetSessionRequest(session_id=session_id))
                assert info.next_step == T  # every step applied exactly once
            return results

    results = asyncio.run(asyncio.wait_for(main(), timeout=240))
    differences = sum(
        int((np.abs(y - want[i]) > 1e-5).sum()) for i, (_, y, _) in enumerate(results)
    )
    assert differences == 0
    assert sum(r for _, _, r in results) > 0  # retransmissions really happened
