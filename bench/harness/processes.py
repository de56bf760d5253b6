"""Starting the systems as processes, waiting until they serve, and stopping them."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.harness.paths import ROOT
from bench.harness.progress import say
from bench.harness.systems import System

READY = re.compile(
    r"serving .* on (?P<host>[\w.\-\[\]:]+?):(?P<port>\d+)(?: \(pid (?P<pid>\d+)\))?"
)


@dataclass
class Running:
    """A started system: its process, address and the pid whose CPU is measured."""

    system: System
    process: subprocess.Popen[bytes]
    address: str
    pid: int
    log: Path


def start(system: System, logs: Path) -> Running:
    """Start a system and wait for its ``serving ... on HOST:PORT`` lines (bounded).

    A system of several worker processes is ready once every worker said it serves; they
    share one port.
    """
    log = logs / f"{system.name}.log"
    env = dict(os.environ)
    env.update(system.env or {})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    with log.open("wb") as sink:
        process = subprocess.Popen(
            system.command,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: terminate() ends its children too
        )
    deadline = time.monotonic() + system.startup_timeout_s
    try:
        while time.monotonic() < deadline:
            matches = list(READY.finditer(log.read_text(errors="replace")))
            if len(matches) >= system.workers:
                match = matches[0]
                pid = int(match["pid"]) if match["pid"] else process.pid
                address = f"127.0.0.1:{match['port']}"
                return Running(system, process, address, pid, log)
            if process.poll() is not None:
                raise RuntimeError(
                    f"{system.name} exited with {process.returncode} before serving:\n" + tail(log)
                )
            time.sleep(0.1)
        raise RuntimeError(
            f"{system.name} did not report serving within {system.startup_timeout_s:g}s:\n"
            + tail(log)
        )
    except BaseException:
        terminate(process)
        raise


def tail(log: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a server's log."""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def terminate(process: subprocess.Popen[bytes], grace_s: float = 15.0) -> None:
    """SIGTERM the process group, then SIGKILL it if it lingers."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)


@contextlib.contextmanager
def running(systems: Sequence[System], logs: Path) -> Iterator[list[Running]]:
    """Start every system (in order), yield them, stop them all whatever happens.

    The list yielded is live: a system restarted during the runs replaces its entry, and
    that replacement is what is stopped at the end.
    """
    started: list[Running] = []
    try:
        for system in systems:
            say(f"starting {system.name}: {shlex.join(system.command)}")
            began = time.monotonic()
            started.append(start(system, logs))
            say(
                f"{system.name} serving on {started[-1].address} "
                f"(pid {started[-1].pid}, {time.monotonic() - began:.1f}s)"
            )
        yield started
    finally:
        for item in started:
            terminate(item.process)
