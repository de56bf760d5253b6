"""The server as a process: health, reflection, SIGTERM drain, and no torch on the serving path."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from rnnstream.v1 import rnnstream_pb2 as pb
from rnnstream.v1 import rnnstream_pb2_grpc as pb_grpc
from tests.service.duplex import Duplex
from tests.service.processes import start_process

REPO = Path(__file__).resolve().parents[2]


def test_serving_path_never_imports_torch():
    code = (
        "import rnnstream.server.server, rnnstream.server.cli, rnnstream.cli, sys; "
        "assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)


def test_health_and_reflection(server):
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "rnnstream.v1.Predictor", "inference.GRPCInferenceService"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = reflect.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
        )
        names = {s.name for s in next(answers).list_services_response.service}
        assert {
            "rnnstream.v1.Predictor",
            "inference.GRPCInferenceService",
            "grpc.health.v1.Health",
        } <= names


@pytest.fixture
def server_process(
    tiny_models: Path, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    proc, address = start_process(tiny_models, tmp_path / "state", "--grace-s", "5")
    try:
        yield proc, address
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        if proc.stderr:
            proc.stderr.close()


def test_sigterm_drains_live_streams_and_exits_zero(server_process):
    proc, address = server_process
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == 1
        live = Duplex(pb_grpc.PredictorStub(channel))
        sid = live.open(model="tiny").session_id
        live.steps(0, [[0.5, -0.5]])
        proc.send_signal(signal.SIGTERM)
        ended = live.recv()
        assert ended.WhichOneof("kind") == "ended"
        assert ended.ended.reason == pb.END_REASON_DRAINING and ended.ended.session_id == sid
        assert proc.wait(timeout=30) == 0


def test_serve_refuses_a_missing_repository(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rnnstream.cli",
            "serve",
            "--models",
            str(tmp_path / "none"),
            "--port",
            "0",
            "--state-dir",
            "",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "is not a directory" in result.stderr
