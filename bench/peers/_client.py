"""What both peers' load-generator adapters share: their stubs, the model's widths, the end."""

from __future__ import annotations

import abc
import importlib
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc

from rnnstream.loadgen import GRPC_EOF, LoadSpec, StreamProtocol

PEERS = Path(__file__).resolve().parent.parent / ".peers"


class PeerProtocol(StreamProtocol):
    """A peer's adapter: the protobuf module its setup.sh generated, and the model's widths.

    A subclass names the module (``stubs_module``) and says where its serve.py left the
    model's manifest (``manifest_path``); ``peer`` is the peer's folder under bench/.peers.
    """

    stubs_module: str

    def __init__(self) -> None:
        path = str(self.peer / "stubs")
        if path not in sys.path:
            sys.path.insert(0, path)
        self.pb: ModuleType = importlib.import_module(self.stubs_module)
        self.model = ""

    @property
    def peer(self) -> Path:
        """The peer's folder: bench/.peers/NAME (setup.sh's venv and stubs, serve.py's files)."""
        return PEERS / self.name

    @abc.abstractmethod
    def manifest_path(self) -> Path:
        """The manifest.json serve.py left beside the peer's copy of ``self.model``."""

    async def prepare(self, channel: grpc.aio.Channel, spec: LoadSpec) -> None:
        """Widths from the manifest the peer serves."""
        self.model = spec.model or "bench-gru"
        manifest = json.loads(self.manifest_path().read_text())
        self.n_features = int(manifest["n_features"])
        self.n_outputs = int(manifest["n_outputs"])
        await channel.channel_ready()


async def finish(call: Any) -> None:
    """Half-close a stream call and read until the peer ends it (at most 4 messages)."""
    await call.done_writing()
    for _ in range(4):
        if await call.read() is GRPC_EOF:
            return
