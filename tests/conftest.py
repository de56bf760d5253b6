"""Shared fixtures: tiny models written in milliseconds, and a real server on 127.0.0.1:0."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.tiny_model import TinyRnn

if TYPE_CHECKING:
    from rnnstream.server.settings import Settings

TINY = TinyRnn.random(n_features=2, hidden=5, n_outputs=3, seed=1)
TINY_M2O = TinyRnn.random(n_features=3, hidden=4, n_outputs=1, seed=2)


@pytest.fixture(scope="session", autouse=True)
def private_state_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """XDG_STATE_HOME in a temporary folder: no test reads or writes the user's real state
    directory, whatever settings it forgets to pass (servers it starts inherit it)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))
        yield


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tiny_server_settings(models: Path, **extra: Any) -> Settings:
    """A test server's settings: 127.0.0.1 on a free port, ``tiny`` the default model, a 1 s
    drain, no state directory; ``extra`` adds settings or overrides these."""
    from rnnstream.server.settings import Settings

    base: dict[str, Any] = {
        "models": models,
        "host": "127.0.0.1",
        "port": 0,
        "default_model": "tiny",
        "grace_s": 1.0,
        "state_dir": "",
    }
    return Settings.from_env({}, **(base | extra))


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository: tiny/1 (F=2, O=3, many-to-many) and tiny-m2o/1 (many-to-one)."""
    root = tmp_path_factory.mktemp("models")
    TINY.write(root / "tiny" / "1", "tiny", "1")
    TINY_M2O.write(root / "tiny-m2o" / "1", "tiny-m2o", "1", return_sequences=False)
    return root


@pytest.fixture(scope="module")
def server(tiny_models: Path) -> Iterator[object]:
    """A real rnnstream server on 127.0.0.1 and a free port, serving the tiny models."""
    from rnnstream.server.server import BackgroundServer

    with BackgroundServer(tiny_server_settings(tiny_models)) as running:
        yield running
