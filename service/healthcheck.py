"""Exit 0 when the local server answers SERVING on grpc.health.v1 (the Docker HEALTHCHECK).

``python -m rnnstream.server.healthcheck [--address HOST:PORT] [--timeout S]``; the address
defaults to ``127.0.0.1:$RNNSTREAM_PORT`` (50051).
"""

from __future__ import annotations

import argparse
import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(address: str, timeout: float, service: str = "") -> bool:
    """Whether ``address`` reports ``service`` as SERVING within ``timeout`` seconds."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            print(f"unhealthy: {address}: {exc.code().name} {exc.details()}", file=sys.stderr)
            return False
    serving: bool = response.status == health_pb2.HealthCheckResponse.SERVING
    if not serving:
        print(f"unhealthy: {address} reports {response.status}", file=sys.stderr)
    return serving


def main() -> int:
    """Command-line entry point; the exit code is the verdict."""
    port = os.environ.get("RNNSTREAM_PORT") or "50051"
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--address", default=f"127.0.0.1:{port}", help="server to check")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait")
    args = parser.parse_args()
    return 0 if check(args.address, args.timeout) else 1


if __name__ == "__main__":
    sys.exit(main())
