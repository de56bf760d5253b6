"""The asyncio SDK against a real server (each test runs its own ``asyncio.run``)."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

import rnnstream
from rnnstream.aio import _AsyncStream
from tests.conftest import TINY
from tests.sdk.conftest import rand, reference, server_next_step

ATOL = 1e-5


def client_for(server) -> rnnstream.AsyncClient:
    return rnnstream.AsyncClient(server.address, timeout=10, backoff=0.01)


def test_step_steps_end_match_reference(server):
    x = rand(20, 25)

    async def main():
        async with client_for(server) as client, client.session("tiny", chunk_size=4) as s:
            assert s.model.n_outputs == 3 and s.id
            ys = [await s.step(x[t]) for t in range(5)]
            rest = await s.steps(x[5:])
            last = await s.end()
            return np.vstack([np.array(ys), rest]), last

    y, last = asyncio.run(main())
    want, _ = reference(x)
    np.testing.assert_allclose(y, want, atol=ATOL)
    np.testing.assert_allclose(last, want[-1], atol=ATOL)


def test_many_to_one_and_return_state(server):
    x = rand(21, 12, f=3)
    x2 = rand(22, 7)

    async def main():
        async with client_for(server) as client:
            s = await client.session("tiny-m2o")
            await s.steps(x)
            y = await s.end()
            await s.close()
            async with client.session("tiny", return_state=True) as s2:
                await s2.steps(x2)
                return y, s2.states, s2.state

    y, states, state = asyncio.run(main())
    np.testing.assert_allclose(y, reference(x, m2o=True)[0][-1], atol=ATOL)
    np.testing.assert_allclose(states, reference(x2)[1], atol=ATOL)
    np.testing.assert_allclose(state, reference(x2)[1][-1], atol=ATOL)


def test_predict_models_get_and_delete(server):
    x = np.stack([rand(23, 6), rand(24, 6)])

    async def main():
        async with client_for(server) as client:
            y = await client.predict(x, model="tiny")
            names = [m.name for m in await client.models()]
            health = await client.health()
            s = await client.session("tiny")
            await s.step([1.0, 2.0])
            info = await client.get_session(s.id)
            await s.delete()
            with pytest.raises(rnnstream.NotFoundError):
                await client.get_session(s.id)
            return y, names, health, info

    y, names, health, info = asyncio.run(main())
    np.testing.assert_allclose(y, TINY.run(x)[0], atol=ATOL)
    assert sorted(names) == ["tiny", "tiny-m2o"] and health == "SERVING"
    assert info.next_step == 1 and info.live


def test_errors(server):
    async def main():
        async with client_for(server) as client:
            with pytest.raises(rnnstream.NotFoundError, match="no-such-model") as err:
                await client.session("no-such-model")
            assert err.value.code == grpc.StatusCode.NOT_FOUND
            async with client.session("tiny") as s:
                with pytest.raises(ValueError, match=r"\[T, 2\]"):
                    await s.steps(np.zeros((3, 5)))
                s._core.enqueue(np.zeros((1, 3), dtype=np.float32))  # past the checks
                with pytest.raises(rnnstream.InvalidArgumentError, match="multiple of 2"):
                    await s._run(s._core.drained)
                return await s.step([0.5, 0.5])

    y = asyncio.run(main())
    np.testing.assert_allclose(y, reference(np.array([[0.5, 0.5]]))[0][0], atol=ATOL)


def test_resume_after_outputs_lost_in_flight(server, monkeypatch):
    x = rand(25, 30)
    original = _AsyncStream.recv
    dropped = []

    async def main():
        async with (
            client_for(server) as client,
            client.session("tiny", chunk_size=5, window=3) as s,
        ):

            async def recv(self, timeout):
                response = await original(self, timeout)
                if (
                    not dropped
                    and response is not None
                    and response.WhichOneof("kind") == "outputs"
                ):
                    dropped.append(1)
                    while server_next_step(server, s.id) < 15:  # all three messages applied
                        await asyncio.sleep(0.005)
                    self.call.cancel()
                    raise rnnstream.RnnstreamError(
                        "test: connection reset", grpc.StatusCode.CANCELLED
                    )
                return response

            monkeypatch.setattr(_AsyncStream, "recv", recv)
            y = await s.steps(x)
            s._stream.call.cancel()  # and a drop between calls
            y2 = await s.steps(x[:4])
            return y, y2, s.reconnects, server_next_step(server, s.id)

    y, y2, reconnects, next_step = asyncio.run(main())
    want, _ = reference(np.vstack([x, x[:4]]))
    assert dropped and reconnects == 2 and next_step == 34
    np.testing.assert_allclose(y, want[:30], atol=ATOL)
    np.testing.assert_allclose(y2, want[30:], atol=ATOL)


def test_superseded_is_not_retried(server):
    async def main():
        async with client_for(server) as client:
            a = await client.session("tiny")
            await a.step([0.0, 1.0])
            async with client.session(session_id=a.id) as b:
                await b.step([1.0, 0.0])
                with pytest.raises(rnnstream.SessionEndedError) as err:
                    await a.step([0.0, 0.0])
                assert err.value.reason == "SUPERSEDED"
                assert server_next_step(server, a.id) == 2
            await a.close()

    asyncio.run(main())
