"""Prometheus metrics: sessions, steps, batches, latency and errors, on an HTTP port.

Counters the core already keeps (sessions by state, ends by reason, refusals by limit,
steps and batches per model; nothing per principal, whose number is unbounded) are read
at scrape time by a collector, so the hot path pays nothing for them. The batch-size and
per-message latency histograms are observed as work happens. Each server has its own
registry, so several can run in one process (tests).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from rnnstream.server.auth import FAILURE_REASONS

if TYPE_CHECKING:
    from rnnstream.server.sessions import SessionManager

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class _CoreCollector(Collector):
    """Reads the session manager's and engines' own counters at scrape time."""

    def __init__(self, sessions: SessionManager) -> None:
        self.sessions = sessions

    def collect(self) -> Iterator[Metric]:
        """Yield the current values."""
        sessions = self.sessions
        by_state = GaugeMetricFamily(
            "rnnstream_sessions", "Sessions held, by whether a stream is attached", labels=["state"]
        )
        live = sessions.live_streams
        by_state.add_metric(["live"], live)
        by_state.add_metric(["idle"], len(sessions) - live)
        yield by_state
        ended = CounterMetricFamily(
            "rnnstream_sessions_ended", "Sessions ended, by reason", labels=["reason"]
        )
        for reason, count in sessions.ended_counts.items():
            ended.add_metric([reason.name.lower()], count)
        yield ended
        refusals = CounterMetricFamily(
            "rnnstream_limit_refusals",
            "Sessions and streams refused at a limit, by the limit's setting",
            labels=["limit"],
        )
        for limit, count in sessions.limit_refusals.items():
            refusals.add_metric([limit], count)
        yield refusals
        steps = CounterMetricFamily(
            "rnnstream_steps",
            "Session-steps computed (one sequence, one time step)",
            labels=["model"],
        )
        batches = CounterMetricFamily(
            "rnnstream_batches", "onnxruntime calls (batches of steps)", labels=["model"]
        )
        for model in sessions.repository.models():
            steps.add_metric([model.key], model.engine.steps_run)
            batches.add_metric([model.key], model.engine.batches)
        yield steps
        yield batches


class Metrics:
    """The metrics of one server.

    Example::

        metrics = Metrics(sessions)
        metrics.serve(9100)          # http://127.0.0.1:9100/metrics
        metrics.error(grpc.StatusCode.NOT_FOUND)
    """

    def __init__(self, sessions: SessionManager) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_CoreCollector(sessions))
        self.batch_size = Histogram(
            "rnnstream_batch_size",
            "Sessions per onnxruntime call",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.step_latency = Histogram(
            "rnnstream_step_latency_seconds",
            "Time from a Steps message's arrival to its outputs",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "rnnstream_errors", "Requests refused, by status code", ["code"], registry=self.registry
        )
        self.auth_failures = Counter(
            "rnnstream_auth_failures",
            "Calls refused UNAUTHENTICATED, by reason",
            ["reason"],
            registry=self.registry,
        )
        for reason in FAILURE_REASONS:  # every series from the start, at 0
            self.auth_failures.labels(reason)
        self._server: WSGIServer | None = None

    def auth_failure(self, reason: str) -> None:
        """Count one call refused UNAUTHENTICATED (``reason``: one of ``FAILURE_REASONS``)."""
        self.auth_failures.labels(reason).inc()

    def error(self, code: grpc.StatusCode) -> None:
        """Count one refused request."""
        self.errors.labels(code.name).inc()

    def serve(self, port: int, host: str = "0.0.0.0") -> None:
        """Expose ``/metrics`` over HTTP on ``port``."""
        self._server, _ = start_http_server(port, addr=host, registry=self.registry)

    def close(self) -> None:
        """Stop the HTTP endpoint, if any."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
