"""Several clients' results of one run combined into one, and a failed run's result."""

from __future__ import annotations

import dataclasses
import math

import pytest

from bench.harness import results
from rnnstream import loadgen


def _part(
    messages: int,
    elapsed_s: float,
    p50: float,
    server_cpu: float | None,
    client_cpu: float | None,
    streams: int = 8,
) -> loadgen.LoadResult:
    spec = loadgen.LoadSpec(target="127.0.0.1:1", streams=streams, label="rnnstream-w2")
    return dataclasses.replace(
        results.failed(spec, "unused"),
        channels=4,
        elapsed_s=elapsed_s,
        messages=messages,
        timesteps=messages,
        errors=0,
        error_messages=[],
        msg_per_s=messages / elapsed_s,
        timesteps_per_s=messages / elapsed_s,
        latency_us={"p50": p50, "p90": 2 * p50, "p99": 3 * p50, "mean": p50, "max": 4 * p50},
        server_cpu_us_per_msg=server_cpu,
        client_cpu_us_per_msg=client_cpu,
        n_features=8,
        n_outputs=1,
    )


def test_rates_counts_and_channels_add_up() -> None:
    a, b = _part(1000, 2.0, 100.0, None, None), _part(3000, 2.0, 100.0, None, None)
    combined = results.combine([a, b])
    assert combined.msg_per_s == 2000.0
    assert combined.timesteps_per_s == 2000.0
    assert (combined.messages, combined.streams, combined.channels) == (4000, 16, 8)
    assert combined.label == "rnnstream-w2"
    assert combined.extra == {
        "clients": 2,
        "client_streams": [8, 8],
        "client_msg_per_s": [500.0, 1500.0],
    }


def test_server_cpu_is_counted_once_and_client_cpu_summed() -> None:
    # Both clients saw the same 0.8 s of server CPU in the shared window.
    a = _part(1000, 2.0, 100.0, server_cpu=800.0, client_cpu=300.0)
    b = _part(3000, 2.0, 100.0, server_cpu=800.0 / 3, client_cpu=100.0)
    combined = results.combine([a, b])
    assert combined.server_cpu_us_per_msg == pytest.approx(200.0)  # 0.8 s / 4000 messages
    assert combined.client_cpu_us_per_msg == pytest.approx(150.0)  # (0.3 + 0.3) s / 4000


def test_cpu_unknown_stays_unknown() -> None:
    combined = results.combine([_part(10, 1.0, 1.0, None, None), _part(10, 1.0, 1.0, None, 5.0)])
    assert combined.server_cpu_us_per_msg is None
    assert combined.client_cpu_us_per_msg is None


def test_latency_is_weighted_by_messages() -> None:
    combined = results.combine(
        [_part(1000, 1.0, 100.0, None, None), _part(3000, 1.0, 200.0, None, None)]
    )
    assert combined.latency_us["p50"] == pytest.approx(175.0)
    assert combined.latency_us["p99"] == pytest.approx(525.0)
    assert combined.latency_us["max"] == 800.0


def test_a_failed_client_counts_its_streams_as_errors() -> None:
    spec = loadgen.LoadSpec(target="127.0.0.1:1", streams=8, label="rnnstream-w2")
    good = _part(1000, 2.0, 100.0, 400.0, 300.0)
    combined = results.combine([good, results.failed(spec, "client 1: boom")])
    assert combined.errors == 8
    assert combined.error_messages == ["client 1: boom"]
    assert combined.msg_per_s == 500.0
    assert combined.latency_us["p50"] == 100.0  # from the client that measured
    assert combined.server_cpu_us_per_msg == pytest.approx(400.0)


def test_a_failed_run_has_no_rate_and_no_latency() -> None:
    spec = loadgen.LoadSpec(target="127.0.0.1:1", streams=3, label="x")
    result = results.failed(spec, "boom")
    assert (result.errors, result.msg_per_s, result.error_messages) == (3, 0.0, ["boom"])
    assert all(math.isnan(v) for v in result.latency_us.values())


def test_nothing_to_combine_is_an_error() -> None:
    with pytest.raises(ValueError):
        results.combine([])
