"""Server start and stop: a start that fails undoes what it started, and stop is idempotent.

Every failure here is a real one (a port held by a socket, a model whose graph does not match
its manifest); afterwards no engine thread is left, the engines refuse work and the ports
are free again.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from rnnstream.server.engine import EngineClosed
from rnnstream.server.repository import ModelLoadError, ModelRepository
from rnnstream.server.server import BackgroundServer, Server, grpc_options
from rnnstream.server.settings import Settings
from tests.conftest import TINY, free_port


def settings(models: Path, **extra: object) -> Settings:
    """Loopback, a free port unless ``extra`` says otherwise, no state directory."""
    values: dict[str, object] = {"host": "127.0.0.1", "port": 0, "grace_s": 0.5, "state_dir": ""}
    return Settings.from_env({}, models=models, **{**values, **extra})


def threads(prefix: str) -> set[threading.Thread]:
    """The live threads named ``prefix...``."""
    return {t for t in threading.enumerate() if t.name.startswith(prefix)}


def engine_threads() -> set[threading.Thread]:
    """The live engine threads (one per loaded model, named ``engine-<name>/<version>``)."""
    return threads("engine-")


def assert_closed(repository: ModelRepository) -> None:
    """Every engine of ``repository`` refuses new work."""
    for model in repository.models():
        x = np.zeros((1, 1, model.manifest.n_features), np.float32)
        with pytest.raises(EngineClosed):
            model.engine.submit(x, state=model.initial_state[None])


def is_free(port: int) -> bool:
    """Whether a TCP socket can be bound to 127.0.0.1:``port`` now."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port on 127.0.0.1 that a listening socket holds for the test."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def test_a_taken_grpc_port_fails_the_start_and_leaves_nothing_running(tiny_models, taken_port):
    before = engine_threads()
    server = Server(settings(tiny_models, port=taken_port))
    with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{taken_port}.*port in use"):
        asyncio.run(server.start())
    assert engine_threads() <= before
    assert_closed(server.repository)


def test_a_taken_metrics_port_fails_the_start_and_frees_the_grpc_port(tiny_models, taken_port):
    before = engine_threads()
    grpc_port = free_port()
    server = Server(settings(tiny_models, port=grpc_port, metrics_port=taken_port))
    with pytest.raises(
        OSError, match=f"cannot serve metrics on 127.0.0.1:{taken_port}.*--metrics-port"
    ):
        asyncio.run(server.start())
    assert engine_threads() <= before
    assert_closed(server.repository)
    assert is_free(grpc_port)


def test_a_model_that_does_not_load_leaves_nothing_running(tmp_path):
    TINY.write(tmp_path / "a" / "1", "a", "1")  # loads, so its engine thread starts first
    TINY.write(tmp_path / "b" / "1", "b", "1")
    manifest = tmp_path / "b" / "1" / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "onnx_sha256": "0" * 64}))
    before, loops_before = engine_threads(), threads("rnnstream-server")
    background = BackgroundServer(settings(tmp_path))
    with pytest.raises(ModelLoadError, match=re.escape(str(tmp_path / "b" / "1"))):
        background.start()
    assert engine_threads() <= before
    assert threads("rnnstream-server") <= loops_before
    assert background.running is None


def test_stop_twice_is_harmless_and_a_stopped_server_does_not_start_again(tiny_models):
    before = engine_threads()
    server = Server(settings(tiny_models))
    with pytest.raises(RuntimeError, match="not started"):
        _ = server.port

    async def lifecycle() -> int:
        await server.stop()  # before start: nothing to do
        await server.start()
        port = server.port
        assert not is_free(port)
        await server.stop()
        await server.stop()
        with pytest.raises(RuntimeError, match="starts once"):
            await server.start()
        return port

    port = asyncio.run(lifecycle())
    assert is_free(port)
    assert engine_threads() <= before
    assert_closed(server.repository)


def test_background_server_stops_twice_and_its_thread_ends(tiny_models):
    loops_before = threads("rnnstream-server")
    background = BackgroundServer(settings(tiny_models)).start()
    port = background.port
    background.stop()
    background.stop()
    assert is_free(port)
    assert threads("rnnstream-server") <= loops_before


def test_the_grpc_server_gets_the_pending_request_limits():
    options = dict(grpc_options(Settings.from_env({}, max_pending_requests=300)))
    assert options["grpc.server.max_pending_requests"] == 300
    assert options["grpc.server.max_pending_requests_hard_limit"] == 600
    with pytest.raises(ValueError, match="max_pending_requests must be at least 1"):
        Settings.from_env({}, max_pending_requests=0)
