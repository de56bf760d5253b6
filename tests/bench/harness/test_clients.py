"""One run's streams over several load-generator processes, against the real server."""

from __future__ import annotations

from bench.harness import clients, plan
from rnnstream import loadgen
from tests.conftest import free_port


def test_clients_measure_their_shares_and_add_up(server: object) -> None:
    spec = loadgen.LoadSpec(
        target=server.address,  # type: ignore[attr-defined]
        streams=5,
        messages=7,
        warmup_s=0.0,
        model="tiny",
        timeout_s=30.0,
        label="rnnstream",
    )
    result = clients.run(spec, plan.split(5, 2), loadgen.RnnstreamProtocol)
    assert result.errors == 0, result.error_messages
    assert result.messages == 35  # every stream of every client, 7 messages each
    assert result.extra["client_streams"] == [3, 2]
    assert result.channels == 5  # 3 + 2: one channel per stream below 4
    assert result.client_cpu_us_per_msg is not None


def test_a_client_that_cannot_connect_fails_the_run_without_hanging() -> None:
    spec = loadgen.LoadSpec(
        target=f"127.0.0.1:{free_port()}", streams=4, duration_s=0.5, timeout_s=1.0
    )
    result = clients.run(spec, plan.split(4, 2), loadgen.RnnstreamProtocol)
    assert result.errors == 4
    assert result.messages == 0
    assert all("client" in message for message in result.error_messages)
