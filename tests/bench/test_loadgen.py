"""The load generator against the echo server and a real rnnstream server (tiny model)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import grpc
import pytest

from bench.echo_server import EchoServicer
from rnnstream import bench_report, loadgen, proc_cpu
from rnnstream.v1 import rnnstream_pb2_grpc as pb_grpc


async def _against_echo(spec_kwargs: dict[str, object]) -> loadgen.LoadResult:
    server = grpc.aio.server()
    pb_grpc.add_PredictorServicer_to_server(EchoServicer("echo", 3, 2, 4), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        spec = loadgen.LoadSpec(target=f"127.0.0.1:{port}", warmup_s=0, **spec_kwargs)  # type: ignore[arg-type]
        return await loadgen.run_async(spec)
    finally:
        await server.stop(None)


def test_lockstep_against_echo_counts_every_message() -> None:
    result = asyncio.run(_against_echo({"streams": 3, "messages": 7}))
    assert result.errors == 0, result.error_messages
    assert result.messages == 21
    assert result.timesteps == 21
    assert (result.n_features, result.n_outputs) == (3, 2)
    assert result.latency_us["p50"] > 0
    assert result.channels == 1


def test_pipelined_chunks_against_echo() -> None:
    result = asyncio.run(
        _against_echo(
            {"streams": 2, "messages": 9, "window": 4, "steps_per_message": 5, "channels": 2}
        )
    )
    assert result.errors == 0, result.error_messages
    assert result.messages == 18
    assert result.timesteps == 90
    assert result.channels == 2


def test_duration_mode_against_echo_stops_in_time() -> None:
    result = asyncio.run(_against_echo({"streams": 2, "duration_s": 0.3}))
    assert result.errors == 0
    assert result.messages > 0
    assert 0.25 < result.elapsed_s < 5


def test_real_server_lockstep_and_json(server: object, tmp_path: Path) -> None:
    address = server.address  # type: ignore[attr-defined]
    spec = loadgen.LoadSpec(
        target=address, streams=2, messages=4, warmup_s=0, model="tiny", server_pid=os.getpid()
    )
    result = loadgen.run(spec)
    assert result.errors == 0, result.error_messages
    assert result.messages == 8
    assert (result.n_features, result.n_outputs) == (2, 3)
    assert result.server_cpu_us_per_msg is not None
    path = tmp_path / "out.json"
    bench_report.write_json(path, [result], {"note": "test"})
    document = json.loads(path.read_text())
    assert document["meta"] == {"note": "test"}
    assert document["results"][0]["messages"] == 8
    assert "p99" in document["results"][0]["latency_us"]


def test_real_server_pipelined_chunks_close_their_sessions(server: object) -> None:
    address = server.address  # type: ignore[attr-defined]
    sessions = server.running.sessions  # type: ignore[attr-defined]
    before = len(sessions)
    spec = loadgen.LoadSpec(
        target=address, streams=3, messages=5, window=3, steps_per_message=4, warmup_s=0
    )
    result = loadgen.run(spec)
    assert result.errors == 0, result.error_messages
    assert result.timesteps == 3 * 5 * 4
    assert len(sessions) == before  # End(close=True) freed every session


def test_unknown_model_is_a_load_error(server: object) -> None:
    spec = loadgen.LoadSpec(target=server.address, messages=1, model="nope")  # type: ignore[attr-defined]
    with pytest.raises(loadgen.LoadError, match="nope"):
        loadgen.run(spec)


def test_invalid_spec_says_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="streams must be at least 1"):
        loadgen.LoadSpec(target="127.0.0.1:1", streams=0)


def test_table_has_a_row_per_result() -> None:
    result = asyncio.run(_against_echo({"streams": 1, "messages": 3}))
    lines = bench_report.format_table([result, result]).splitlines()
    assert len(lines) == 4
    assert "msg/s" in lines[0]


def test_tree_cpu_seconds_of_this_process() -> None:
    assert proc_cpu.tree_cpu_seconds(os.getpid()) > 0
