"""Replicas for the end-to-end tests: real ``rnnstream serve`` processes that say who they are.

Replica ``i`` serves the same tiny models under the names ``replica-0``, ``replica-1``, ...
and selects ``replica-<i>`` as its default model, so ``ListModels().default_model`` names
the replica that answered a call made through the load balancer. Given a session store
they share it, so sessions move between them.
"""

from __future__ import annotations

import signal
import subprocess
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from rnnstream.v1 import rnnstream_pb2 as pb
from rnnstream.v1 import rnnstream_pb2_grpc as pb_grpc
from tests.conftest import TINY
from tests.service.processes import start_process
from tests.service.scale_out.conftest import drain_stderr

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
    """Running replicas: their processes, addresses (in ring order) and logs."""

    procs: list[subprocess.Popen[str]] = field(default_factory=list)
    addresses: list[str] = field(default_factory=list)
    logs: list[list[str]] = field(default_factory=list)
    readers: list[threading.Thread] = field(default_factory=list)

    def stop(self, i: int) -> int:
        """SIGTERM replica ``i`` (it drains) and return its exit code."""
        return self._end(i, signal.SIGTERM)

    def kill(self, i: int) -> int:
        """SIGKILL replica ``i`` (it dies on the spot) and return its exit code."""
        return self._end(i, signal.SIGKILL)

    def live(self) -> list[int]:
        """The replicas still running."""
        return [i for i, proc in enumerate(self.procs) if proc.poll() is None]

    def _end(self, i: int, sig: int) -> int:
        proc = self.procs[i]
        if proc.poll() is None:
            proc.send_signal(sig)
        code = proc.wait(timeout=30)
        self.readers[i].join(timeout=30)
        if proc.stderr is not None:
            proc.stderr.close()
        return code


@contextmanager
def running_replicas(
    models: Path, n: int, store: str = "", extra: Sequence[str] = ()
) -> Iterator[Replicas]:
    """Start ``n`` replicas at once, on the session ``store`` if one is given, with ``extra``
    flags; stop every one still running on exit. Their logs are read all along (a full
    pipe would stall a replica) and kept in ``Replicas.logs``."""
    flags = [*(["--store", store] if store else []), *extra]

    def start(i: int) -> tuple[subprocess.Popen[str], str]:
        return start_process(
            models, "", "--default-model", replica_name(i), "--grace-s", "2", *flags
        )

    replicas = Replicas()
    with ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(start, i) for i in range(n)]
    try:
        for future in futures:
            proc, address = future.result()
            replicas.procs.append(proc)
            replicas.addresses.append(address)
            replicas.logs.append([])
            replicas.readers.append(drain_stderr(proc, replicas.logs[-1]))
        yield replicas
    finally:
        for i in range(len(replicas.procs)):
            replicas.stop(i)  # the ones still running drain; every log pipe is closed
        for future in futures[len(replicas.procs) :]:
            if future.exception() is None:  # started, but an earlier one failed to
                proc = future.result()[0]
                proc.kill()
                proc.wait(timeout=30)
                if proc.stderr is not None:
                    proc.stderr.close()


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
