"""``rnnstream serve --workers N``: one supervisor, N worker processes serving one port.

Python serves gRPC on one core per process, so a machine's other cores need more
processes. Every worker is a whole server (``rnnstream serve`` with ``--worker I``) that
binds the same address with ``SO_REUSEPORT``: the kernel spreads new connections over the
listening workers, with no proxy hop in between and nothing shared in memory. The
supervisor itself serves nothing on the gRPC port. It:

- starts the workers with the supervisor's own settings (every field passed as its
  ``RNNSTREAM_*`` variable, so a flag given to the supervisor reaches each worker);
- restarts a worker that exits without being asked to, after a backoff that doubles per
  quick death (0.5 s up to 30 s, reset once a worker has lived a minute), and logs it;
- serves one Prometheus ``/metrics`` for all workers on ``--metrics-port``: each worker
  serves its own on a private loopback port, and a scrape of the supervisor gathers them
  with a ``worker`` label, plus the supervisor's own ``rnnstream_workers`` and
  ``rnnstream_worker_restarts_total``;
- forwards SIGHUP to every worker, so each re-reads its token and TLS files;
- on SIGTERM or SIGINT tells every worker to drain (each drains exactly as a single
  process does) and exits 0 when all of them did.

Health: every worker answers ``grpc.health.v1`` on the shared port for itself, so a check
reaches a live worker as long as one is up; while draining they all answer NOT_SERVING.
Sessions are owned by one worker at a time; a resume that lands on another worker moves
the session through the session store (``--store``; without one the workers share
``local``, SQLite in --state-dir or in a private temporary directory).
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from rnnstream.server.secret_files import SecretFileError
from rnnstream.server.security import Security, start_warnings
from rnnstream.server.settings import ENV_PREFIX, Settings

log = logging.getLogger(__name__)

BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 60.0
POLL_S = 0.1
# Beyond the drain grace: a worker that has not exited by then is killed.
STOP_MARGIN_S = 15.0
# A worker that exits by itself this soon after starting, this many times in a row, cannot
# start (a model that does not load, a port taken by another program): give up.
QUICK_EXIT_S = 10.0
QUICK_EXITS_TO_GIVE_UP = 4
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def worker_count(value: str) -> int:
    """``--workers``: a positive number, or ``auto`` for one worker per usable core."""
    if value == "auto":
        return (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else os.cpu_count() or 1
        )
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise ValueError(f"--workers is {value!r}: use a positive number or auto")
    return count


def settings_environment(settings: Settings) -> dict[str, str]:
    """Every setting as its ``RNNSTREAM_*`` variable: what a worker process is started with."""
    env: dict[str, str] = {}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        env[ENV_PREFIX + f.name.upper()] = str(value)
    return env


@dataclass
class Worker:
    """One worker process slot: its index, process, restarts and backoff."""

    index: int
    metrics_port: int = 0
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    backoff_s: float = BACKOFF_FIRST_S
    restart_at: float | None = None
    quick_exits: int = 0
    exit_codes: list[int] = field(default_factory=list)


class WorkersFailed(RuntimeError):
    """A worker cannot start: it exited by itself right after starting, again and again."""


class Supervisor:
    """Starts, watches, restarts and drains the worker processes of one port.

    Example::

        code = Supervisor(Settings.from_env(workers="4")).run()   # until SIGTERM
    """

    def __init__(self, settings: Settings, environ: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self.count = worker_count(settings.workers)
        self.port = settings.port
        self._environ = dict(os.environ if environ is None else environ)
        self.workers = [Worker(index=i + 1) for i in range(self.count)]
        self._stopping = threading.Event()
        self._metrics_server: WSGIServer | None = None
        self._port_holder: socket.socket | None = None
        # What the workers are started with: without --store they share ``local``.
        self.worker_settings = settings
        self._private_state_dir: str | None = None

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT, then drain every worker; the process exit code."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self._stopping.set())
        signal.signal(signal.SIGHUP, lambda *_: self.forward(signal.SIGHUP))
        failed = False
        try:
            self.start()
            while not self._stopping.is_set():
                self.check()
                self._stopping.wait(POLL_S)
            log.info("signal received: draining %d workers", self.count)
        except (WorkersFailed, SecretFileError) as exc:
            log.error("%s", exc)
            failed = True
        finally:
            code = self.stop()
        return 1 if failed else code

    def start(self) -> None:
        """Pick the port (``--port 0``: a free one, the same for every worker), start workers."""
        Security.from_settings(self.settings)  # a bad token or TLS file: stop before workers
        for warning in start_warnings(self.settings):
            log.warning("%s", warning)
        self.worker_settings = self._with_store(self.settings)
        if self.port == 0:
            self._port_holder = _reserve_port(self.settings.host)
            self.port = self._port_holder.getsockname()[1]
        if self.settings.metrics_port:
            for worker in self.workers:
                worker.metrics_port = _free_port()
            self._serve_metrics()
        for worker in self.workers:
            self._spawn(worker)
        log.info(
            "supervising %d workers on %s:%d (pids %s)",
            self.count,
            self.settings.host,
            self.port,
            ", ".join(str(w.process.pid) for w in self.workers if w.process),
        )

    def forward(self, sig: signal.Signals) -> None:
        """Send ``sig`` to every running worker (SIGHUP: each re-reads its credentials)."""
        for worker in self.workers:
            if worker.process is not None and worker.process.poll() is None:
                worker.process.send_signal(sig)

    def _with_store(self, settings: Settings) -> Settings:
        """The workers' settings: a session store, so a session moves to any worker.

        Without --store they share ``local`` in --state-dir; with no state directory, in a
        private temporary one removed at exit (sessions move between workers, but nothing
        survives a restart).
        """
        if settings.store:
            return settings
        state_dir = settings.state_dir
        if not state_dir:
            state_dir = self._private_state_dir = tempfile.mkdtemp(prefix="rnnstream-workers-")
        return dataclasses.replace(settings, store="local", state_dir=state_dir)

    def check(self) -> None:
        """Notice workers that exited and restart each once its backoff has passed."""
        now = time.monotonic()
        for worker in self.workers:
            process = worker.process
            if process is not None and process.poll() is not None:
                lived = now - worker.started_at
                worker.exit_codes.append(process.returncode)
                worker.process = None
                if lived >= STABLE_AFTER_S:
                    worker.backoff_s = BACKOFF_FIRST_S
                quick = lived < QUICK_EXIT_S and process.returncode > 0
                worker.quick_exits = worker.quick_exits + 1 if quick else 0
                if worker.quick_exits >= QUICK_EXITS_TO_GIVE_UP:
                    raise WorkersFailed(
                        f"worker {worker.index} exited with {_describe_exit(process.returncode)} "
                        f"within {QUICK_EXIT_S:g}s of starting, {worker.quick_exits} times in a "
                        "row: giving up (its own error is logged above)"
                    )
                worker.restart_at = now + worker.backoff_s
                log.error(
                    "worker %d (pid %d) exited with %s after %.1fs; restarting in %.1fs",
                    worker.index,
                    process.pid,
                    _describe_exit(process.returncode),
                    lived,
                    worker.backoff_s,
                )
                worker.backoff_s = min(worker.backoff_s * 2, BACKOFF_MAX_S)
            if (
                worker.process is None
                and worker.restart_at is not None
                and now >= worker.restart_at
            ):
                worker.restarts += 1
                worker.restart_at = None
                self._spawn(worker)
                assert worker.process is not None
                log.info("worker %d restarted (pid %d)", worker.index, worker.process.pid)

    def stop(self) -> int:
        """Drain every worker and stop the metrics endpoint; 0 when all drained cleanly."""
        self._stopping.set()
        running = [w for w in self.workers if w.process is not None]
        for worker in running:
            assert worker.process is not None
            worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.grace_s + STOP_MARGIN_S
        code = 0
        for worker in running:
            assert worker.process is not None
            try:
                returncode = worker.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker %d did not drain in time: killed", worker.index)
                worker.process.kill()
                returncode = worker.process.wait()
            if returncode != 0:
                log.error("worker %d exited with %s", worker.index, _describe_exit(returncode))
                code = 1
            worker.process = None
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
            self._metrics_server = None
        if self._port_holder is not None:
            self._port_holder.close()
            self._port_holder = None
        if self._private_state_dir is not None:
            shutil.rmtree(self._private_state_dir, ignore_errors=True)
            self._private_state_dir = None
        log.info("stopped")
        return code

    def _spawn(self, worker: Worker) -> None:
        """Start one worker process with the supervisor's settings."""
        env = dict(self._environ)
        env.update(settings_environment(self.worker_settings))
        env[ENV_PREFIX + "PORT"] = str(self.port)
        env[ENV_PREFIX + "WORKERS"] = "1"
        env[ENV_PREFIX + "WORKER"] = str(worker.index)
        env[ENV_PREFIX + "METRICS_PORT"] = str(worker.metrics_port)
        command = [sys.executable, "-m", "rnnstream.cli", "serve"]
        worker.process = subprocess.Popen(command, env=env, preexec_fn=_drain_when_orphaned)
        worker.started_at = time.monotonic()

    def _serve_metrics(self) -> None:
        """One ``/metrics`` for every worker, on ``--metrics-port``."""
        registry = CollectorRegistry()
        registry.register(_WorkersCollector(self))
        self._metrics_server, _ = start_http_server(
            self.settings.metrics_port, addr=self.settings.host, registry=registry
        )


class _WorkersCollector(Collector):
    """At scrape time: every worker's metrics with a ``worker`` label, and the supervisor's."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def collect(self) -> Iterator[Metric]:
        """Yield the merged families."""
        merged: dict[str, Metric] = {}
        for worker in self.supervisor.workers:
            if worker.process is None or not worker.metrics_port:
                continue
            for family in _scrape(worker.metrics_port):
                into = merged.get(family.name)
                if into is None:
                    into = merged[family.name] = Metric(
                        family.name, family.documentation, family.type
                    )
                for sample in family.samples:
                    labels = {**sample.labels, "worker": str(worker.index)}
                    into.add_sample(sample.name, labels, sample.value)
        yield from merged.values()
        up = GaugeMetricFamily(
            "rnnstream_workers", "Worker processes, by whether they are running", labels=["state"]
        )
        alive = sum(1 for w in self.supervisor.workers if w.process is not None)
        up.add_metric(["running"], alive)
        up.add_metric(["restarting"], self.supervisor.count - alive)
        yield up
        restarts = CounterMetricFamily(
            "rnnstream_worker_restarts", "Worker processes restarted after exiting", labels=[]
        )
        restarts.add_metric([], sum(w.restarts for w in self.supervisor.workers))
        yield restarts


def _scrape(port: int) -> list[Metric]:
    """One worker's metric families (none when it does not answer: it may be restarting)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as answer:
            text = answer.read().decode()
    except OSError:
        return []
    return list(text_string_to_metric_families(text))


def _drain_when_orphaned() -> None:
    """In a new worker, before it runs: SIGTERM it (a drain) if the supervisor dies.

    A supervisor killed with -9 cannot tell its workers; without this they would serve on,
    unsupervised. Linux only (prctl PR_SET_PDEATHSIG); elsewhere nothing happens.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _reserve_port(host: str) -> socket.socket:
    """A bound (not listening) ``SO_REUSEPORT`` socket holding a free port for the workers."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    holder = socket.socket(family, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind((host.strip("[]"), 0))
    return holder


def _free_port() -> int:
    """A loopback TCP port that was free a moment ago (for a worker's private metrics)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _describe_exit(returncode: int) -> str:
    """``exit code 3`` or ``signal SIGKILL``."""
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"
