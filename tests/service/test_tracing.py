"""OpenTelemetry tracing (--otel) over a real server, recorded by an in-memory exporter."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import rnnstream
from rnnstream.cli import main
from rnnstream.kserve import grpc_service_pb2 as kpb
from rnnstream.kserve import grpc_service_pb2_grpc as kpb_grpc
from rnnstream.server import tracing
from rnnstream.server.server import BackgroundServer
from rnnstream.server.settings import Settings
from rnnstream.v1 import rnnstream_pb2 as pb
from rnnstream.v1 import rnnstream_pb2_grpc as pb_grpc
from tests.conftest import tiny_server_settings

STREAM = "rnnstream.v1.Predictor/Stream"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN_ID = "00f067aa0ba902b7"
WAIT_S = 30.0  # how long a span may take to end after its call's answer (not a timing test)


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture(scope="module")
def traced(tiny_models: Path, exporter: InMemorySpanExporter):
    """A real server on 127.0.0.1 whose spans go to ``exporter``."""
    settings = tiny_server_settings(tiny_models, otel=True)
    with BackgroundServer(settings, tracing.setup(True, exporter=exporter)) as running:
        yield running


@pytest.fixture
def spans(exporter: InMemorySpanExporter) -> InMemorySpanExporter:
    exporter.clear()
    return exporter


def wait_for(exporter: InMemorySpanExporter, name: str, count: int = 1) -> list[ReadableSpan]:
    """The ended spans called ``name``, once there are ``count`` (a call's span ends after
    its client has the answer)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        found = [s for s in exporter.get_finished_spans() if s.name == name]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.01)


def step_batches(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == tracing.STEP_BATCH_SPAN]


def test_stream_has_an_rpc_span_with_its_step_batches_as_children(traced, spans):
    x = np.random.default_rng(0).standard_normal((7, 2)).astype(np.float32)
    with (
        rnnstream.Client(traced.address, timeout=10) as client,
        client.session(model="tiny") as session,
    ):
        session.steps(x[:4])  # one Steps message each: 4 steps, then 3
        session.steps(x[4:])
        session_id = session.id
    (rpc,) = wait_for(spans, STREAM)
    assert rpc.kind is SpanKind.SERVER
    assert rpc.status.status_code is StatusCode.UNSET  # OK: nothing to flag
    assert dict(rpc.attributes or {}) == {
        "rpc.system": "grpc",
        "rpc.service": "rnnstream.v1.Predictor",
        "rpc.method": "Stream",
        "rpc.grpc.status_code": grpc.StatusCode.OK.value[0],
    }
    assert rpc.parent is None
    batches = sorted(step_batches(spans), key=lambda s: s.start_time or 0)
    assert [dict(b.attributes or {}) for b in batches] == [
        {
            "rnnstream.model": "tiny",
            "rnnstream.model_version": "1",
            "rnnstream.session_id": session_id,
            "rnnstream.step.first": first,
            "rnnstream.step.last": last,
            "rnnstream.steps": last - first + 1,
        }
        for first, last in ((0, 3), (4, 6))
    ]
    for batch in batches:
        assert batch.context is not None and rpc.context is not None
        assert batch.context.trace_id == rpc.context.trace_id
        assert batch.parent is not None and batch.parent.span_id == rpc.context.span_id


def test_a_retransmission_runs_only_its_new_steps(traced, spans):
    x = np.zeros((6, 2), np.float32)
    with grpc.insecure_channel(traced.address) as channel:
        requests = [
            pb.StreamRequest(open=pb.Open(model="tiny")),
            pb.StreamRequest(steps=pb.Steps(start=0, x=x[:3].ravel().tolist())),
            pb.StreamRequest(steps=pb.Steps(start=1, x=x[1:].ravel().tolist())),  # 1, 2 again
        ]
        responses = list(pb_grpc.PredictorStub(channel).Stream(iter(requests), timeout=10))
    kinds = [r.WhichOneof("kind") for r in responses]
    assert kinds == ["opened", "outputs", "outputs", "final"]  # final: at the half-close
    wait_for(spans, STREAM)
    ranges = sorted(
        (b.attributes["rnnstream.step.first"], b.attributes["rnnstream.step.last"])
        for b in step_batches(spans)
        if b.attributes is not None
    )
    assert ranges == [(0, 2), (3, 5)]


def test_a_client_trace_continues(traced, spans):
    traceparent = f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"
    with grpc.insecure_channel(traced.address) as channel:
        pb_grpc.PredictorStub(channel).ListModels(
            pb.ListModelsRequest(), metadata=(("traceparent", traceparent),), timeout=10
        )
    (rpc,) = wait_for(spans, "rnnstream.v1.Predictor/ListModels")
    assert rpc.context is not None and rpc.parent is not None
    assert rpc.context.trace_id == int(TRACE_ID, 16)
    assert rpc.parent.span_id == int(PARENT_SPAN_ID, 16) and rpc.parent.is_remote


def test_a_refused_call_ends_its_span_with_error(traced, spans):
    with grpc.insecure_channel(traced.address) as channel:
        stub = pb_grpc.PredictorStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.GetSession(pb.GetSessionRequest(session_id="not a valid id!"), timeout=10)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    (rpc,) = wait_for(spans, "rnnstream.v1.Predictor/GetSession")
    assert rpc.status.status_code is StatusCode.ERROR
    assert rpc.status.description == "INVALID_ARGUMENT"
    assert rpc.attributes is not None
    assert rpc.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert not rpc.events  # a status the handler chose is no exception to record


def test_a_refused_stream_ends_its_span_with_error(traced, spans):
    with grpc.insecure_channel(traced.address) as channel:
        requests = [pb.StreamRequest(open=pb.Open(model="tiny", session_id="n" * 20))]
        with pytest.raises(grpc.RpcError) as err:
            list(pb_grpc.PredictorStub(channel).Stream(iter(requests), timeout=10))
    assert err.value.code() is grpc.StatusCode.NOT_FOUND
    (rpc,) = wait_for(spans, STREAM)
    assert rpc.status.status_code is StatusCode.ERROR
    assert rpc.attributes is not None
    assert rpc.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert not step_batches(spans)


def test_kserve_sequence_requests_are_traced_too(traced, spans):
    x = np.zeros((3, 2), np.float32)
    request = kpb.ModelInferRequest(model_name="tiny")
    request.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.astype("<f4").tobytes())
    request.parameters["sequence_id"].int64_param = 42
    request.parameters["sequence_start"].bool_param = True
    request.parameters["sequence_end"].bool_param = True
    with grpc.insecure_channel(traced.address) as channel:
        kpb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    (rpc,) = wait_for(spans, "inference.GRPCInferenceService/ModelInfer")
    assert rpc.attributes is not None and rpc.attributes["rpc.method"] == "ModelInfer"
    (batch,) = step_batches(spans)
    assert batch.attributes is not None
    assert (batch.attributes["rnnstream.step.first"], batch.attributes["rnnstream.steps"]) == (0, 3)
    assert batch.parent is not None and rpc.context is not None
    assert batch.parent.span_id == rpc.context.span_id


def test_health_checks_are_not_traced(traced, spans):
    with rnnstream.Client(traced.address, timeout=10) as client:
        assert client.health() == "SERVING"
        client.models()  # ListModels, traced: the health call before it would be too by now
    wait_for(spans, "rnnstream.v1.Predictor/ListModels")
    assert [s.name for s in spans.get_finished_spans()] == ["rnnstream.v1.Predictor/ListModels"]


def test_resource_names_the_service_and_the_process(monkeypatch):
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    first = tracing.setup(True, exporter=InMemorySpanExporter())
    second = tracing.setup(True, exporter=InMemorySpanExporter())
    assert isinstance(first, tracing.OtelTracing) and isinstance(second, tracing.OtelTracing)
    attributes = first.provider.resource.attributes
    assert attributes["service.name"] == "rnnstream"
    assert attributes["process.pid"] == os.getpid()
    other = second.provider.resource.attributes["service.instance.id"]
    assert attributes["service.instance.id"] != other  # workers are told apart
    monkeypatch.setenv("OTEL_SERVICE_NAME", "inference")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=staging")
    named = tracing.setup(True, exporter=InMemorySpanExporter())
    assert isinstance(named, tracing.OtelTracing)
    assert named.provider.resource.attributes["service.name"] == "inference"
    assert named.provider.resource.attributes["deployment.environment"] == "staging"
    for each in (first, second, named):
        each.shutdown()


def test_exporters_are_named_by_the_standard_variable():
    assert tracing.check(True, {}) == ["otlp"]
    assert tracing.check(True, {"OTEL_TRACES_EXPORTER": "console, none"}) == ["console", "none"]
    assert tracing.check(False, {"OTEL_TRACES_EXPORTER": "zipkin"}) == []  # off: not read
    with pytest.raises(tracing.TracingError, match="zipkin"):
        tracing.check(True, {"OTEL_TRACES_EXPORTER": "zipkin"})
    quiet = tracing.setup(True, environ={"OTEL_TRACES_EXPORTER": "none"})
    assert quiet.enabled
    quiet.shutdown()


def test_off_by_default(server):
    assert not Settings.from_env({}).otel
    assert Settings.from_env({"RNNSTREAM_OTEL": "1"}).otel
    assert tracing.setup(False) is tracing.OFF
    assert server.running.sessions.tracer is tracing.OFF  # the fixture's server: no --otel
    assert tracing.OFF.interceptors(["rnnstream.v1.Predictor"]) == []


def test_serve_help_lists_the_flag(capsys):
    with pytest.raises(SystemExit) as done:
        main(["serve", "--help"])
    assert done.value.code == 0
    assert "--otel" in capsys.readouterr().out


def _without_opentelemetry(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a Python where no opentelemetry module can be imported."""
    blocked = "import sys; sys.modules['opentelemetry'] = None\n"
    return subprocess.run(
        [sys.executable, "-c", blocked + code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**os.environ, "RNNSTREAM_STATE_DIR": ""},
    )


def test_serves_without_opentelemetry_when_off(tiny_models, tmp_path):
    code = f"""
from pathlib import Path
import rnnstream
from rnnstream.server.server import BackgroundServer
from rnnstream.server.settings import Settings
settings = Settings.from_env({{}}, models=Path({str(tiny_models)!r}), host="127.0.0.1", port=0,
                             default_model="tiny", state_dir="")
with BackgroundServer(settings) as server, rnnstream.Client(server.address, timeout=10) as c:
    with c.session(model="tiny") as s:
        print(s.steps([[1.0, 2.0]]).shape)
print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
"""
    done = _without_opentelemetry(code, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["(1, 3)", "['opentelemetry']"]  # only the block


def test_otel_without_the_packages_is_one_clear_error(tiny_models, tmp_path):
    code = (
        "from rnnstream.cli import main\n"
        f"sys.exit(main(['serve', '--otel', '--port', '0', '--models', {str(tiny_models)!r}]))"
    )
    done = _without_opentelemetry(code, tmp_path)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "pip install 'rnnstream[otel]'" in lines[0]
