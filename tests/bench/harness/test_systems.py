"""What the harness can start: rnnstream once per worker count, and waiting for every worker."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

from bench.harness import processes, systems


def test_one_worker_keeps_the_plain_name() -> None:
    assert systems.rnnstream_name(1) == "rnnstream"
    assert systems.rnnstream_name(2) == "rnnstream-w2"


def test_rnnstream_is_offered_once_per_worker_count(tiny_models: Path) -> None:
    offered = systems.available(tiny_models, "tiny", ["--max-batch", "8"], workers=(1, 3))
    single, three = offered["rnnstream"], offered["rnnstream-w3"]
    assert "--workers" not in single.command
    assert single.workers == 1
    assert three.command[-2:] == ["--workers", "3"]
    assert three.command[:-2] == single.command  # the same server, the same flags
    assert "--max-batch" in three.command
    assert three.workers == 3


def test_protocol_factories_pickle_for_client_processes(tiny_models: Path) -> None:
    offered = systems.available(tiny_models, "tiny")
    assert pickle.loads(pickle.dumps(offered["rnnstream"].protocol))().name == "rnnstream"
    peer = systems._peer_protocol("bench.peers.triton.client", "TritonProtocol")
    assert pickle.loads(pickle.dumps(peer)).args == peer.args  # type: ignore[attr-defined]


def test_start_waits_for_every_workers_serving_line(tmp_path: Path) -> None:
    script = (
        "import sys, time\n"
        "print('serving one on 127.0.0.1:5001', file=sys.stderr, flush=True)\n"
        "time.sleep(0.5)\n"
        "print('serving two on 127.0.0.1:5001', file=sys.stderr, flush=True)\n"
        "time.sleep(60)\n"
    )
    system = systems.System("two", [sys.executable, "-c", script], workers=2)
    started = processes.start(system, tmp_path)
    try:
        assert started.address == "127.0.0.1:5001"
        assert started.log.read_text().count("serving") == 2
    finally:
        processes.terminate(started.process)
    assert started.process.poll() is not None
