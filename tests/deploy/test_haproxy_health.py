"""HAProxy's health check reads the gRPC health status: a replica that answers NOT_SERVING
leaves the ring, and comes back once it answers SERVING."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tests.conftest import free_port
from tests.deploy.haproxy import Haproxy


@pytest.fixture
def health_only_servers() -> Iterator[list[tuple[str, health.HealthServicer]]]:
    """Two in-process gRPC servers that serve only grpc.health.v1, both SERVING."""
    started = []
    try:
        for _ in range(2):
            server = grpc.server(ThreadPoolExecutor(max_workers=2))
            servicer = health.HealthServicer()
            servicer.set("", health_pb2.HealthCheckResponse.SERVING)
            health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
            port = server.add_insecure_port("127.0.0.1:0")
            server.start()
            started.append((server, f"127.0.0.1:{port}", servicer))
        yield [(address, servicer) for _, address, servicer in started]
    finally:
        for server, _, _ in started:
            server.stop(None).wait(10)


def test_not_serving_takes_a_replica_out_and_serving_brings_it_back(health_only_servers, tmp_path):
    (steady, _), (flapping, servicer) = health_only_servers
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    proxy = Haproxy([steady, flapping], f"127.0.0.1:{free_port()}", tmp_path)
    try:
        proxy.wait_for_line(r"Server rnnstream/rnnstream-1 is DOWN")
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        proxy.wait_for_line(r"Server rnnstream/rnnstream-1 is UP")
    finally:
        proxy.stop()
    # The replica that stayed SERVING passed every check meanwhile.
    assert not [line for line in proxy.lines if "rnnstream/rnnstream-0 is" in line]
