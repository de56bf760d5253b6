"""The continuous-batching engine, without a network."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest

from rnnstream.manifest import Manifest
from rnnstream.server.engine import Engine, EngineClosed, StepResult
from rnnstream.server.graph import StepGraph
from rnnstream.server.state_table import StateTable
from tests.conftest import TINY


@pytest.fixture
def engine(tiny_models: Path):
    directory = tiny_models / "tiny" / "1"
    manifest = Manifest.load(directory)
    table = StateTable(64, manifest.state_size, np.zeros(manifest.state_size, np.float32))
    engine = Engine(
        StepGraph(directory / "model.onnx", manifest), table, max_batch=8, name="tiny/1"
    )
    yield engine
    engine.close()


def test_concurrent_sessions_share_batches_and_match_reference(engine):
    x = np.random.default_rng(3).standard_normal((20, 6, 2)).astype(np.float32)
    want, want_h = TINY.run(x)
    rows = [engine.table.allocate() for _ in range(20)]

    async def drive():
        return await asyncio.gather(
            *(
                engine.submit(x[i : i + 1], rows=np.array([rows[i]]), want_states=True)
                for i in range(20)
            )
        )

    results = asyncio.run(drive())
    for i, result in enumerate(results):
        np.testing.assert_allclose(result.y[0], want[i], atol=1e-5)
        np.testing.assert_allclose(engine.table.rows[rows[i]], want_h[i, -1], atol=1e-5)
    # 20 sessions x 6 steps ran in batches of up to 8 sessions, not 120 separate calls
    assert engine.steps_run == 120
    assert engine.batches < 120


def test_private_state_leaves_table_alone(engine):
    x = np.random.default_rng(4).standard_normal((3, 4, 2)).astype(np.float32)
    before = engine.table.rows.copy()

    async def drive():
        return await engine.submit(x, state=np.zeros((3, 5), np.float32))

    result = asyncio.run(drive())
    np.testing.assert_allclose(result.y, TINY.run(x)[0], atol=1e-5)
    np.testing.assert_array_equal(engine.table.rows, before)


def test_closed_engine_refuses_work(engine):
    engine.close()

    async def drive():
        engine.submit(np.zeros((1, 1, 2), np.float32), rows=np.array([0]))

    with pytest.raises(EngineClosed):
        asyncio.run(drive())


def test_state_table_free_list():
    table = StateTable(2, 3, np.array([1.0, 2.0, 3.0], np.float32))
    a, b = table.allocate(), table.allocate()
    assert (a, b) == (0, 1) and table.free == 0
    np.testing.assert_array_equal(table.rows[a], [1.0, 2.0, 3.0])
    from rnnstream.server.errors import ResourceExhausted

    with pytest.raises(ResourceExhausted, match="all 2 session rows"):
        table.allocate()
    table.rows[a] = 9.0
    table.release(a)
    assert table.allocate() == a
    np.testing.assert_array_equal(table.rows[a], [1.0, 2.0, 3.0])  # reset on reuse


BUNDLED = Path(__file__).resolve().parents[2] / "models" / "seattle-temp" / "1"


def test_chunks_run_through_the_sequence_graph_and_match_stepping():
    manifest = Manifest.load(BUNDLED)
    assert manifest.sequence_onnx_file, "the bundled model ships a sequence graph"
    step = StepGraph(BUNDLED / manifest.onnx_file, manifest)
    chunk = StepGraph(BUNDLED / manifest.sequence_onnx_file, manifest, chunked=True)
    x = (50 + 5 * np.random.default_rng(8).standard_normal((3, 40, 1))).astype(np.float32)
    engines = {}
    results = {}
    for name, sequence in (("chunked", chunk), ("stepped", None)):
        table = StateTable(8, manifest.state_size, np.zeros(manifest.state_size, np.float32))
        engine = engines[name] = Engine(step, table, 8, name, sequence)
        rows = [table.allocate() for _ in range(3)]

        async def drive(engine=engine, rows=rows):
            return await asyncio.gather(
                *(engine.submit(x[i : i + 1], rows=np.array([rows[i]])) for i in range(3))
            )

        results[name] = (
            np.concatenate([r.y for r in asyncio.run(drive())]),
            table.rows[rows].copy(),
        )
        engine.close()
    np.testing.assert_allclose(results["chunked"][0], results["stepped"][0], atol=1e-4)
    np.testing.assert_allclose(results["chunked"][1], results["stepped"][1], atol=1e-5)
    assert engines["stepped"].batches == 40  # one call per step (the three sessions share them)
    assert engines["chunked"].batches < 40  # equal-length chunks share sequence-graph calls
    assert engines["chunked"].steps_run == engines["stepped"].steps_run == 120


def _tiny_engine(tiny_models: Path, inline_max_steps: int = 4, capacity: int = 4) -> Engine:
    directory = tiny_models / "tiny" / "1"
    manifest = Manifest.load(directory)
    table = StateTable(capacity, manifest.state_size, np.zeros(manifest.state_size, np.float32))
    graph = StepGraph(directory / "model.onnx", manifest)
    return Engine(graph, table, 8, "tiny/1", inline_max_steps=inline_max_steps)


def test_small_requests_of_one_loop_iteration_share_batches(tiny_models: Path):
    engine = _tiny_engine(tiny_models, capacity=64)
    x = np.random.default_rng(5).standard_normal((36, 3, 2)).astype(np.float32)
    want, _ = TINY.run(x)
    rows = [engine.table.allocate() for _ in range(36)]
    threads = set()
    engine.on_batch = lambda size: threads.add(threading.get_ident())

    def submit(i):
        return engine.submit(x[i : i + 1], rows=np.array([rows[i]]))

    async def drive():
        # 12 requests of 3 steps each (inline) in one loop iteration, as when several
        # streams' messages arrive together: the first runs at once, the rest share batches
        first = [submit(i) for i in range(12)]
        assert isinstance(first[0], StepResult)
        assert not any(f.done() for f in first[1:])  # they wait for the end of the iteration
        results = [first[0], *await asyncio.gather(*first[1:])]
        # after an iteration with several, the first of the next waits to share a batch too
        batches = engine.batches
        second = [submit(i) for i in range(12, 24)]
        assert not any(isinstance(r, StepResult) for r in second)
        results += await asyncio.gather(*second)
        assert engine.batches - batches == 5  # 36 session-steps in full batches of 8
        # once requests come alone again, a lone one runs at once again
        results.append(await submit(24))  # alone in its iteration, but after a busy one
        results.append(submit(25))
        assert isinstance(results[-1], StepResult)
        return results

    try:
        results = asyncio.run(drive())
    finally:
        engine.close()
    for i, result in enumerate(results):
        np.testing.assert_allclose(result.y[0], want[i], atol=1e-5)
    assert threads == {threading.get_ident()}  # ran on the event loop's thread


def test_a_lone_small_message_runs_at_once(tiny_models: Path):
    engine = _tiny_engine(tiny_models)
    x = np.random.default_rng(6).standard_normal((3, 2)).astype(np.float32)  # [T, F]
    row = engine.table.allocate()
    want_y, want_h = TINY.run(x[None])

    async def drive():
        return engine.submit(x[None], rows=np.array([row]), want_states=True)

    try:
        result = asyncio.run(drive())
    finally:
        engine.close()
    assert isinstance(result, StepResult)  # computed without a future or a hand-over
    assert result.states is not None
    np.testing.assert_allclose(result.y[0], want_y[0], atol=1e-5)
    np.testing.assert_allclose(result.states[0], want_h[0], atol=1e-5)
    np.testing.assert_allclose(engine.table.rows[row], want_h[0, -1], atol=1e-5)
    assert engine.batches == 3 and engine.steps_run == 3  # no sequence graph: 3 steps


def test_large_requests_go_to_the_engine_thread(tiny_models: Path):
    engine = _tiny_engine(tiny_models, inline_max_steps=4)
    row = engine.table.allocate()
    threads = set()
    engine.on_batch = lambda size: threads.add(threading.get_ident())

    async def drive():
        ran = engine.submit(np.ones((1, 5, 2), np.float32), rows=np.array([row]))
        assert isinstance(ran, asyncio.Future)  # 5 steps > inline_max_steps
        return await ran

    try:
        asyncio.run(drive())
    finally:
        engine.close()
    assert threads and threading.get_ident() not in threads


@pytest.mark.parametrize("inline_max_steps", [4, 0])
def test_a_failing_step_leaves_the_row_as_it_was(tiny_models: Path, inline_max_steps: int):
    engine = _tiny_engine(tiny_models, inline_max_steps=inline_max_steps)
    row = engine.table.allocate()
    engine.table.rows[row] = 0.25
    real_run, seen = engine.graph.run, []
    done: list[StepResult | None] = []

    def fail_third(x, state):
        seen.append(engine.table.rows[row].copy())  # what the table holds between steps
        if len(seen) == 3:
            raise RuntimeError("onnxruntime failed")
        return real_run(x, state)

    engine.graph.run = fail_third  # type: ignore[method-assign]

    async def drive():
        with pytest.raises(RuntimeError, match="onnxruntime failed"):
            ran = engine.submit(
                np.ones((1, 4, 2), np.float32), rows=np.array([row]), on_done=done.append
            )
            await ran  # (raised by submit itself when it ran at once)

    try:
        asyncio.run(drive())
    finally:
        engine.close()
    assert len(seen) == 3  # two steps ran, then the third failed:
    for state in seen:  # the steps that ran carried their state in the request,
        np.testing.assert_array_equal(state, 0.25)
    np.testing.assert_array_equal(engine.table.rows[row], 0.25)  # and nothing was written
    assert done == [None]  # the owner heard of the failure once


def test_on_done_runs_right_after_the_row_is_written(tiny_models: Path):
    engine = _tiny_engine(tiny_models, inline_max_steps=0)
    row = engine.table.allocate()
    seen = []

    def on_done(result: StepResult | None) -> None:
        assert result is not None
        seen.append((engine.table.rows[row].copy(), future.done()))

    async def drive():
        nonlocal future
        future = engine.submit(
            np.ones((1, 6, 2), np.float32), rows=np.array([row]), on_done=on_done
        )
        return await future

    future: asyncio.Future[StepResult]
    try:
        asyncio.run(drive())
    finally:
        engine.close()
    want = TINY.run(np.ones((1, 6, 2), np.float32))[1][0, -1]
    assert len(seen) == 1
    row_at_done, future_done = seen[0]
    np.testing.assert_allclose(row_at_done, want, atol=1e-5)  # written before on_done,
    assert not future_done  # which runs before the waiter hears


def test_a_lone_chunk_runs_through_the_sequence_graph():
    manifest = Manifest.load(BUNDLED)
    assert manifest.sequence_onnx_file
    step = StepGraph(BUNDLED / manifest.onnx_file, manifest)
    chunk = StepGraph(BUNDLED / manifest.sequence_onnx_file, manifest, chunked=True)
    x = np.random.default_rng(8).standard_normal((16, manifest.n_features)).astype(np.float32)
    results = {}
    for name, sequence in (("chunked", chunk), ("stepped", None)):
        table = StateTable(2, manifest.state_size, np.zeros(manifest.state_size, np.float32))
        engine = Engine(step, table, 8, name, sequence, inline_max_steps=64)
        row = table.allocate()

        async def drive(engine=engine, row=row):
            return engine.submit(x[None], rows=np.array([row]))

        result = asyncio.run(drive())
        engine.close()
        assert isinstance(result, StepResult)
        results[name] = (result.y[0], table.rows[row].copy(), engine.batches)
    np.testing.assert_allclose(results["chunked"][0], results["stepped"][0], atol=1e-4)
    np.testing.assert_allclose(results["chunked"][1], results["stepped"][1], atol=1e-5)
    assert (results["chunked"][2], results["stepped"][2]) == (1, 16)


def test_a_one_row_step_through_bound_buffers_matches_a_plain_run(tiny_models: Path):
    directory = tiny_models / "tiny" / "1"
    graph = StepGraph(directory / "model.onnx", Manifest.load(directory))
    x = np.random.default_rng(9).standard_normal((40, 1, 2)).astype(np.float32)
    h = np.random.default_rng(10).standard_normal((40, 1, 5)).astype(np.float32)
    plain = [graph.session.run(None, {"x": x[i], "state": h[i]}) for i in range(40)]
    got: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}

    def worker(k: int) -> None:  # each thread has its own buffers
        got[k] = [graph.run(x[i], h[i]) for i in range(40)]

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for k in range(3):
        for (y, state), (want_y, want_state) in zip(got[k], plain, strict=True):
            np.testing.assert_array_equal(y, want_y)
            np.testing.assert_array_equal(state, want_state)
        assert got[k][0][0] is not got[k][1][0]  # copies, not the bound buffer


def test_the_one_row_path_refuses_what_onnxruntime_refuses(tiny_models: Path):
    directory = tiny_models / "tiny" / "1"
    graph = StepGraph(directory / "model.onnx", Manifest.load(directory))
    state = np.zeros((1, 5), np.float32)
    for x in (np.zeros((1, 2), np.float64), np.zeros((1, 3), np.float32)):
        with pytest.raises(Exception, match=r"(?i)invalid|dimension|type"):
            graph.run(x, state)


def test_a_lone_stream_arms_no_end_of_iteration_callback(tiny_models: Path):
    engine = _tiny_engine(tiny_models)
    x = np.random.default_rng(11).standard_normal((5, 1, 2)).astype(np.float32)
    row = engine.table.allocate()
    armed = []

    async def drive():
        loop = asyncio.get_running_loop()
        call_soon = loop.call_soon

        def counting_call_soon(callback, *args, **kwargs):
            if callback == engine._end_iteration:
                armed.append(callback)
            return call_soon(callback, *args, **kwargs)

        loop.call_soon = counting_call_soon
        results = []
        for i in range(5):  # one stream: each message in a later iteration, after its reply
            results.append(engine.submit(x[i : i + 1], rows=(row,)))
            await asyncio.sleep(0)
        return results

    try:
        results = asyncio.run(drive())
    finally:
        engine.close()
    assert all(isinstance(r, StepResult) for r in results)  # each ran at once
    assert len(armed) == 1  # only the first, from a task not seen before
    want_y, want_h = TINY.run(x.reshape(1, 5, 2))
    np.testing.assert_allclose(np.concatenate([r.y[0] for r in results]), want_y[0], atol=1e-5)
    np.testing.assert_allclose(engine.table.rows[row], want_h[0, -1], atol=1e-5)


def test_other_streams_after_a_lone_one_still_share_batches(tiny_models: Path):
    engine = _tiny_engine(tiny_models, capacity=8)
    rows = [engine.table.allocate() for _ in range(5)]
    x = np.random.default_rng(12).standard_normal((5, 1, 2)).astype(np.float32)
    ran: list[StepResult | asyncio.Future[StepResult]] = []

    async def stream(i: int) -> None:
        ran.append(engine.submit(x[i : i + 1], rows=(rows[i],)))

    async def drive():
        await stream(0)  # a lone stream ran at once
        await asyncio.sleep(0)
        batches = engine.batches
        # four other streams' messages in one iteration: the first runs at once and
        # arms the end of the iteration, where the other three share one batch
        await asyncio.gather(*(asyncio.create_task(stream(i)) for i in range(1, 5)))
        results = [r if isinstance(r, StepResult) else await r for r in ran]
        return results, engine.batches - batches

    try:
        results, batches = asyncio.run(drive())
    finally:
        engine.close()
    assert [isinstance(r, StepResult) for r in ran] == [True, True, False, False, False]
    assert batches == 2
    want_y, _ = TINY.run(x)
    np.testing.assert_allclose(np.concatenate([r.y for r in results]), want_y, atol=1e-5)


def test_one_step_outputs_have_the_request_shape(tiny_models: Path):
    engine = _tiny_engine(tiny_models, capacity=8)
    rows = np.array([engine.table.allocate() for _ in range(3)])
    x = np.random.default_rng(13).standard_normal((3, 1, 2)).astype(np.float32)
    want_y, want_h = TINY.run(x)

    async def drive():
        return engine.submit(x, rows=rows, want_states=True)

    try:
        result = asyncio.run(drive())
    finally:
        engine.close()
    assert isinstance(result, StepResult) and result.states is not None
    assert result.y.shape == want_y.shape and result.states.shape == want_h.shape  # [k, 1, .]
    np.testing.assert_allclose(result.y, want_y, atol=1e-5)
    np.testing.assert_allclose(result.states, want_h, atol=1e-5)
    np.testing.assert_allclose(engine.table.rows[rows], want_h[:, -1], atol=1e-5)
