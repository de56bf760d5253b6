"""The continuous-batching engine, without a network."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest

from rnnstream.manifest import Manifest
from rnnstream.server.engine import Engine, EngineClosed
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
    assert engine.sequence_steps == 120
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
    assert engines["chunked"].sequence_steps == engines["stepped"].sequence_steps == 120


def test_small_requests_run_inline_batched_per_loop_iteration(tiny_models: Path):
    directory = tiny_models / "tiny" / "1"
    manifest = Manifest.load(directory)
    table = StateTable(64, manifest.state_size, np.zeros(manifest.state_size, np.float32))
    graph = StepGraph(directory / "model.onnx", manifest)
    engine = Engine(graph, table, max_batch=8, name="tiny/1", inline_max_steps=4)
    x = np.random.default_rng(5).standard_normal((12, 3, 2)).astype(np.float32)
    want, _ = TINY.run(x)
    rows = [table.allocate() for _ in range(12)]
    threads = set()
    engine.on_batch = lambda size: threads.add(threading.get_ident())

    async def drive():
        # 12 requests of 3 steps each (inline), submitted in one loop iteration while other
        # work is queued in it (as when several streams' messages arrive together)
        asyncio.get_running_loop().call_soon(lambda: None)
        futures = [engine.submit(x[i : i + 1], rows=np.array([rows[i]])) for i in range(12)]
        assert not any(f.done() for f in futures)  # they wait for the end of the iteration
        return await asyncio.gather(*futures)

    try:
        results = asyncio.run(drive())
    finally:
        engine.close()
    for i, result in enumerate(results):
        np.testing.assert_allclose(result.y[0], want[i], atol=1e-5)
    assert threads == {threading.get_ident()}  # ran on the event loop's thread
    assert engine.batches == 5  # 36 session-steps packed into full batches of 8, not 36 calls


def _tiny_engine(tiny_models: Path, inline_max_steps: int = 4) -> Engine:
    directory = tiny_models / "tiny" / "1"
    manifest = Manifest.load(directory)
    table = StateTable(4, manifest.state_size, np.zeros(manifest.state_size, np.float32))
    graph = StepGraph(directory / "model.onnx", manifest)
    return Engine(graph, table, 8, "tiny/1", inline_max_steps=inline_max_steps)


def test_a_lone_small_message_runs_at_once(tiny_models: Path):
    engine = _tiny_engine(tiny_models)
    x = np.random.default_rng(6).standard_normal((3, 2)).astype(np.float32)  # [T, F]
    row = engine.table.allocate()
    want_y, want_h = TINY.run(x[None])

    async def drive():
        return engine.try_run_now(x, row, want_states=True)

    try:
        result = asyncio.run(drive())
    finally:
        engine.close()
    assert result is not None  # nothing else was queued: computed without a hand-over
    np.testing.assert_allclose(result.y, want_y[0], atol=1e-5)
    np.testing.assert_allclose(result.states, want_h[0], atol=1e-5)
    np.testing.assert_allclose(engine.table.rows[row], want_h[0, -1], atol=1e-5)
    assert engine.batches == 3 and engine.sequence_steps == 3  # no sequence graph: 3 steps


def test_run_now_declines_when_there_is_something_to_batch_with(tiny_models: Path):
    engine = _tiny_engine(tiny_models, inline_max_steps=4)
    row = engine.table.allocate()
    x = np.ones((2, 2), np.float32)

    async def drive():
        assert engine.try_run_now(np.ones((5, 2), np.float32), row, False) is None  # too big
        asyncio.get_running_loop().call_soon(lambda: None)  # another stream's message
        assert engine.try_run_now(x, row, False) is None
        await asyncio.sleep(0)
        future = engine.submit(x[None], rows=np.array([row]))  # queued for this iteration
        assert engine.try_run_now(x, row, False) is None  # joins it instead
        await future

    try:
        asyncio.run(drive())
    finally:
        engine.close()
    assert engine.sequence_steps == 2  # only the submitted request ran


def test_run_now_leaves_the_row_as_it_was_when_a_step_fails(tiny_models: Path):
    engine = _tiny_engine(tiny_models)
    row = engine.table.allocate()
    engine.table.rows[row] = 0.25
    real_run, calls = engine.graph.run, []

    def fail_second(x, state):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("onnxruntime failed")
        return real_run(x, state)

    engine.graph.run = fail_second  # type: ignore[method-assign]

    async def drive():
        with pytest.raises(RuntimeError, match="onnxruntime failed"):
            engine.try_run_now(np.ones((3, 2), np.float32), row, want_states=False)

    try:
        asyncio.run(drive())
    finally:
        engine.close()
    np.testing.assert_array_equal(engine.table.rows[row], 0.25)  # step 1 ran, nothing written


def test_run_now_uses_the_sequence_graph_for_a_chunk():
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
            return engine.try_run_now(x, row, want_states=False)

        result = asyncio.run(drive())
        engine.close()
        assert result is not None
        results[name] = (result.y, table.rows[row].copy(), engine.batches)
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
