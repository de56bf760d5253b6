"""Generate the Python stubs of proto/rnnstream/* into rnnstream/* (``make proto``).

proto/rnnstream/v1 is the native API; proto/rnnstream/kserve holds Triton's KServe v2
(Open Inference Protocol) files, generated into the package ``rnnstream.kserve``.

Runs grpcio-tools' bundled protoc with mypy-protobuf's plugins, so the output is
reproducible from the pinned dev dependencies alone. ``--out DIR`` writes elsewhere
(the staleness test generates into a temporary folder and compares).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PROTO_ROOT.parent
PROTO_FILES = [
    "rnnstream/v1/rnnstream.proto",
    "rnnstream/kserve/grpc_service.proto",
    "rnnstream/kserve/model_config.proto",
]


def _plugin(name: str) -> str:
    """Path of a protoc plugin installed beside this interpreter."""
    path = Path(sys.executable).parent / name
    found = str(path) if path.exists() else shutil.which(name)
    if not found:
        raise SystemExit(f"{name} not found: install the dev extra (pip install -e '.[dev]')")
    return found


def generate(out: Path) -> None:
    """Write *_pb2.py, *_pb2.pyi, *_pb2_grpc.py and *_pb2_grpc.pyi under ``out``."""
    from grpc_tools import protoc

    out.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *PROTO_FILES,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=REPO_ROOT, help="output root (default: repo)")
    generate(parser.parse_args().out)


if __name__ == "__main__":
    main()
