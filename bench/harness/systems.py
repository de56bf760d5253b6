"""The systems the harness can benchmark: how to start each and which protocol it speaks."""

from __future__ import annotations

import functools
import importlib
import json
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness.paths import PEERS
from bench.kserve import KServeProtocol
from rnnstream import loadgen

# Peer servers by name: the adapter class in ``bench.peers.NAME.client`` that drives them.
PEER_ADAPTERS = {"triton": "TritonProtocol", "torchserve": "TorchServeProtocol"}


@dataclass
class System:
    """A server to benchmark: how to start it and which protocol it speaks."""

    name: str
    command: list[str]
    protocol: Callable[[], loadgen.StreamProtocol] = loadgen.RnnstreamProtocol
    env: dict[str, str] | None = None
    chunks: bool = True  # accepts k > 1 steps per message
    startup_timeout_s: float = 120.0
    workers: int = 1  # serving processes, each printing its own ``serving ... on`` line


def rnnstream_name(workers: int) -> str:
    """What ``rnnstream serve --workers N`` is called: ``rnnstream`` alone, else ``rnnstream-wN``.

    One process keeps the plain name, so the targets and earlier results still refer to it.
    """
    return "rnnstream" if workers == 1 else f"rnnstream-w{workers}"


def available(
    models: Path,
    model: str,
    server_args: Sequence[str] = (),
    extra: Mapping[str, str] | None = None,
    workers: Sequence[int] = (1,),
) -> dict[str, System]:
    """Every system this machine can run, by name (peers only when set up).

    ``server_args`` go to ``rnnstream serve``, which is offered once per count of
    ``workers`` (named by :func:`rnnstream_name`); ``extra`` adds rnnstream-protocol
    servers by name, each a command line in which ``{models}`` and ``{model}`` are
    substituted.
    """
    python = sys.executable
    manifest = _manifest(models, model)
    serves = ["--models", str(models), "--model", model]
    systems = {
        "echo": System(
            "echo",
            [
                python,
                "-m",
                "bench.echo_server",
                "--model",
                model,
                "--features",
                str(manifest["n_features"]),
                "--outputs",
                str(manifest["n_outputs"]),
                "--state-size",
                str(manifest["state_size"]),
            ],
        ),
        "diy": System("diy", [python, "-m", "bench.diy_server", *serves]),
    }
    rnnstream = [
        python,
        "-m",
        "rnnstream.cli",
        "serve",
        "--models",
        str(models),
        "--default-model",
        model,
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--state-dir",
        "",
        *server_args,
    ]
    # The same server reached over its second protocol, KServe v2 / Triton gRPC.
    systems["rnnstream-kserve"] = System("rnnstream-kserve", rnnstream, protocol=KServeProtocol)
    for count in workers:
        name = rnnstream_name(count)
        more = [] if count == 1 else ["--workers", str(count)]
        systems[name] = System(name, [*rnnstream, *more], workers=count)
    for name, adapter in PEER_ADAPTERS.items():
        if (PEERS / name / "venv" / "bin" / "python").exists():
            systems[name] = System(
                name,
                [python, "-m", f"bench.peers.{name}.serve", *serves],
                protocol=_peer_protocol(f"bench.peers.{name}.client", adapter),
                startup_timeout_s=240.0,
            )
    for name, command in (extra or {}).items():
        words = [
            w.replace("{models}", str(models)).replace("{model}", model)
            for w in shlex.split(command)
        ]
        systems[name] = System(name, words)
    return systems


def _peer_protocol(module: str, name: str) -> Callable[[], loadgen.StreamProtocol]:
    """A factory that imports the adapter only when used (peers' stubs come from setup.sh).

    A partial of a module-level function, so it pickles: load-generator processes get it.
    """
    return functools.partial(_import_protocol, module, name)


def _import_protocol(module: str, name: str) -> loadgen.StreamProtocol:
    factory: Callable[[], loadgen.StreamProtocol] = getattr(importlib.import_module(module), name)
    return factory()


def _manifest(models: Path, model: str) -> dict[str, Any]:
    found = sorted(models.glob(f"{model}/*/manifest.json"))
    if not found:
        raise SystemExit(f"bench: no {model}/<version>/manifest.json under {models}")
    data: dict[str, Any] = json.loads(found[-1].read_text())
    return data
