"""Replicas for the end-to-end tests: real ``rnnstream serve`` processes that say who they are.

Replica ``i`` serves the same tiny models under the names ``replica-0``, ``replica-1``, ...
and selects ``replica-<i>`` as its default model, so ``ListModels().default_model`` names
the replica that answered a call made through the load balancer.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from rnnstream.v1 import rnnstream_pb2 as pb
from rnnstream.v1 import rnnstream_pb2_grpc as pb_grpc
from tests.conftest import TINY
from tests.service.processes import start_process, stop_process

SESSION_HEADER = "x-rnnstream-session"


def write_models(root: Path, n: int) -> Path:
    """A model repository holding TINY under the name of each of ``n`` replicas."""
    for i in range(n):
        TINY.write(root / replica_name(i) / "1", replica_name(i), "1")
    return root


def replica_name(i: int) -> str:
    """The name replica ``i`` answers to (its default model)."""
    return f"replica-{i}"


@dataclass
class Replicas:
    """Running replicas: their processes and addresses, in ring order."""

    procs: list[subprocess.Popen[str]] = field(default_factory=list)
    addresses: list[str] = field(default_factory=list)

    def stop(self, i: int) -> int:
        """SIGTERM replica ``i`` (it drains) and return its exit code."""
        return stop_process(self.procs[i], signal.SIGTERM)


@contextmanager
def running_replicas(models: Path, n: int) -> Iterator[Replicas]:
    """Start ``n`` replicas at once; stop every one still running on exit."""

    def start(i: int) -> tuple[subprocess.Popen[str], str]:
        return start_process(models, "", "--default-model", replica_name(i), "--grace-s", "2")

    replicas = Replicas()
    with ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(start, i) for i in range(n)]
    try:
        for future in futures:
            proc, address = future.result()
            replicas.procs.append(proc)
            replicas.addresses.append(address)
        yield replicas
    finally:
        for future in futures:
            if future.exception() is None:
                proc = future.result()[0]
                if proc.poll() is None:
                    stop_process(proc, signal.SIGTERM)


def session_metadata(key: str) -> tuple[tuple[str, str | bytes], ...]:
    """The routing header for session ``key``."""
    return ((SESSION_HEADER, key),)


def landing(address: str, keys: Sequence[str]) -> dict[str, str]:
    """Which replica each key's calls land on, asked through ``address`` on a new channel."""
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.PredictorStub(channel)
        return {
            key: stub.ListModels(
                pb.ListModelsRequest(), metadata=session_metadata(key), timeout=10
            ).default_model
            for key in keys
        }
