"""examples/node: the Node.js client against a real server, compared with the Python SDK.

The client runs under the ``node`` on PATH with the locked npm packages (installed into a
cache outside the repository, see ``node_packages``); without node or npm these tests fail
with what to install. The server records every call's metadata through an interceptor, so
the tests see what the client sent on the wire, not only what it printed.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

import rnnstream
from rnnstream._session_id import ROUTING_KEY, is_session_id
from tests.examples.node_packages import NODE_EXAMPLE, node_and_modules

ROOT = Path(__file__).resolve().parents[2]
CLIENT = NODE_EXAMPLE / "stream-csv.js"
STREAM_METHOD = "/rnnstream.v1.Predictor/Stream"


@dataclass
class CallRecorder(grpc.aio.ServerInterceptor):
    """Keeps the method and metadata of every call the server receives."""

    calls: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """Record the call, then serve it as usual."""
        metadata = {str(k): str(v) for k, v in handler_call_details.invocation_metadata or ()}
        self.calls.append((str(handler_call_details.method), metadata))
        return await continuation(handler_call_details)

    def node_streams(self) -> list[dict[str, str]]:
        """The metadata of the Stream calls made by grpc-js (its user agent says so)."""
        return [
            metadata
            for method, metadata in self.calls
            if method == STREAM_METHOD and "grpc-node-js" in metadata.get("user-agent", "")
        ]


@dataclass
class RecordedServer:
    """A running server and the calls it received."""

    address: str
    recorder: CallRecorder


@pytest.fixture(scope="module")
def recorded_server() -> Iterator[RecordedServer]:
    """A real server on 127.0.0.1 and a free port, serving the bundled models."""
    from rnnstream.server.server import BackgroundServer
    from rnnstream.server.settings import Settings

    recorder = CallRecorder()
    make_server = grpc.aio.server

    def server_with_recorder(*args: Any, **kwargs: Any) -> grpc.aio.Server:
        kwargs["interceptors"] = [recorder, *(kwargs.get("interceptors") or ())]
        return make_server(*args, **kwargs)

    settings = Settings.from_env(
        {}, models=ROOT / "models", host="127.0.0.1", port=0, grace_s=1.0, state_dir=""
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(grpc.aio, "server", server_with_recorder)
        running = BackgroundServer(settings).start()
    try:
        yield RecordedServer(running.address, recorder)
    finally:
        running.stop()


@dataclass
class NodeRun:
    """What one run of the client printed: outputs by step, and its log lines."""

    steps: list[int]
    y: np.ndarray  # [T, O]
    log: str


def run_client(address: str, csv: Path, *args: str) -> NodeRun:
    """Run examples/node/stream-csv.js to its end; it must exit 0."""
    node, modules = node_and_modules()
    env = {**os.environ, "NODE_PATH": str(modules)}
    command = [node, str(CLIENT), "--address", address, "--csv", str(csv), *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"the client failed ({done.returncode}):\n{done.stderr}"
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    return NodeRun(
        steps=[line["step"] for line in lines],
        y=np.array([line["y"] for line in lines], dtype=np.float64),
        log=done.stderr,
    )


def test_the_client_streams_a_csv_resumes_after_a_drop_and_matches_the_sdk(
    recorded_server: RecordedServer, tmp_path: Path
) -> None:
    temps = [round(50 + 8 * math.sin(i / 6), 2) for i in range(61)]
    csv = tmp_path / "temps.csv"
    csv.write_text("temp_f\n" + "".join(f"{t:.2f}\n" for t in temps))

    # 4 steps a message, 3 in flight, the first stream cancelled after 5 answers.
    args = ("--model", "seattle-temp", "--chunk", "4", "--window", "3", "--drop-after", "5")
    run = run_client(recorded_server.address, csv, *args)

    assert run.steps == list(range(len(temps))), "every step answered once, in order"
    (opened,) = re.findall(r"opened session (\S+) ", run.log)
    assert is_session_id(opened)
    resumed = re.search(
        rf"resumed session {opened} at next_step (\d+); resending from step (\d+)", run.log
    )
    assert resumed, run.log
    next_step, resent_from = int(resumed.group(1)), int(resumed.group(2))
    assert resent_from == 20  # 5 answers of 4 steps arrived before the drop
    assert resent_from <= next_step <= len(temps)

    streams = recorded_server.recorder.node_streams()
    assert [metadata.get(ROUTING_KEY) for metadata in streams] == [opened, opened]

    with rnnstream.Client(recorded_server.address) as client:
        with client.session("seattle-temp", return_sequences=True) as session:
            expected = session.steps(np.array(temps, dtype=np.float32)[:, None])
        # The client closed its session (End.close): it cannot be resumed.
        with pytest.raises(rnnstream.NotFoundError):
            client.get_session(opened)
    np.testing.assert_allclose(run.y, expected, rtol=0, atol=1e-5)


def test_the_client_picks_the_models_feature_columns_by_name(
    recorded_server: RecordedServer, tmp_path: Path
) -> None:
    rng = np.random.default_rng(3)
    features = np.column_stack([rng.normal(0, 1.5, 25), rng.uniform(0.5, 3, 25)])  # [25, 2]
    csv = tmp_path / "days.csv"
    # The features in the other order, with a column the model does not take in between.
    rows = [f"{spread:.4f},{day},{ret:.4f}" for day, (ret, spread) in enumerate(features)]
    csv.write_text("log_range_pct,day,log_return_pct\n" + "\n".join(rows) + "\n")
    session_id = "node-example-msft-vol-0001"

    run = run_client(
        recorded_server.address, csv, "--model", "msft-vol", "--session-id", session_id
    )

    assert run.steps == list(range(25))
    assert [m.get(ROUTING_KEY) for m in recorded_server.recorder.node_streams()][-1] == session_id
    x = np.round(features, 4).astype(np.float32)
    with (
        rnnstream.Client(recorded_server.address) as client,
        client.session("msft-vol", return_sequences=True) as session,
    ):
        expected = session.steps(x)
    np.testing.assert_allclose(run.y, expected, rtol=0, atol=1e-5)
