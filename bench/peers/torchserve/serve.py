"""Start TorchServe on the bench model and report ``serving torchserve on HOST:PORT (pid N)``.

Runs in the main venv; packs a model archive (``handler.py`` + ``model.onnx`` +
``manifest.json`` + ``model-config.yaml``) with the peer venv's ``torch-model-archiver``,
writes a ``config.properties`` on free 127.0.0.1 ports, starts ``torchserve --foreground``,
waits until the model's worker is READY (management API), prints the line the harness
waits for (the gRPC inference port) and stops TorchServe on SIGTERM/SIGINT.

    .venv/bin/python -m bench.peers.torchserve.serve --models bench/.cache/models
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from bench.peers import _process

HERE = Path(__file__).resolve().parent
PEER = HERE.parent.parent / ".peers" / "torchserve"
BIN = PEER / "venv" / "bin"


def archive(models: Path, model: str, store: Path) -> None:
    """``store/<model>.mar`` from the rnnstream artifact and handler.py."""
    source = sorted(models.glob(f"{model}/*/manifest.json"))[-1].parent
    if store.exists():
        shutil.rmtree(store)
    store.mkdir(parents=True)
    subprocess.run(
        [
            str(BIN / "torch-model-archiver"),
            "--model-name",
            model,
            "--version",
            "1.0",
            "--serialized-file",
            str(source / "model.onnx"),
            "--handler",
            str(HERE / "handler.py"),
            "--extra-files",
            str(source / "manifest.json"),
            "--config-file",
            str(HERE / "model-config.yaml"),
            "--export-path",
            str(store),
            "--force",
        ],
        check=True,
    )
    (store / "manifest.json").write_text((source / "manifest.json").read_text())


def wait_ready(
    management: int, model: str, process: subprocess.Popen[bytes], timeout_s: float
) -> None:
    """Poll GET /models/<model> until a worker is READY; bounded."""
    url = f"http://127.0.0.1:{management}/models/{model}"

    def probe() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                status = json.loads(response.read())
        except (urllib.error.URLError, OSError, ValueError):
            return False
        workers = status[0].get("workers", []) if status else []
        return any(w.get("status") == "READY" for w in workers)

    _process.wait_ready("torchserve", process, probe, timeout_s)


def main(argv: Sequence[str] | None = None) -> int:
    """Start, announce, wait for a signal, stop."""
    p = argparse.ArgumentParser(description="TorchServe (stateful handler) on the bench model.")
    p.add_argument("--models", type=Path, required=True, help="rnnstream model repository")
    p.add_argument("--model", default="bench-gru", help="model name")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds to become ready")
    args = p.parse_args(argv)
    if not (BIN / "torchserve").exists():
        raise SystemExit(f"no torchserve in {BIN}: run bash bench/peers/torchserve/setup.sh")
    store = PEER / "store"
    archive(args.models, args.model, store)
    ports = {
        name: _process.free_port()
        for name in ("inference", "management", "metrics", "grpc", "grpcm")
    }
    config = PEER / "config.properties"
    config.write_text(
        "\n".join(
            [
                f"inference_address=http://127.0.0.1:{ports['inference']}",
                f"management_address=http://127.0.0.1:{ports['management']}",
                f"metrics_address=http://127.0.0.1:{ports['metrics']}",
                f"grpc_inference_port={ports['grpc']}",
                f"grpc_management_port={ports['grpcm']}",
                "grpc_inference_address=127.0.0.1",
                "grpc_management_address=127.0.0.1",
                "disable_token_authorization=true",
                "disable_system_metrics=true",
                "default_workers_per_model=1",
                f"model_store={store}",
                "",
            ]
        )
    )
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "")])
    env["LOG_LOCATION"] = str(PEER / "logs")
    env["METRICS_LOCATION"] = str(PEER / "logs")
    command = [
        str(BIN / "torchserve"),
        "--start",
        "--foreground",
        "--ncs",
        "--disable-token-auth",
        "--ts-config",
        str(config),
        "--model-store",
        str(store),
        "--models",
        f"{args.model}={args.model}.mar",
    ]
    print(" ".join(command), file=sys.stderr, flush=True)
    process = subprocess.Popen(command, env=env, cwd=PEER, stdin=subprocess.DEVNULL)
    try:
        return _process.run_until_signal(
            "torchserve",
            process,
            f"127.0.0.1:{ports['grpc']}",
            lambda: wait_ready(ports["management"], args.model, process, args.timeout),
        )
    finally:
        subprocess.run(
            [str(BIN / "torchserve"), "--stop"],
            env=env,
            cwd=PEER,
            check=False,
            timeout=30,
            capture_output=True,
        )


if __name__ == "__main__":
    sys.exit(main())
