"""The run plan: the settings, the interleaved order of the runs, the clients' shares.

The settings come from the command line; a run's streams are shared out over its
load-generator processes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from bench.harness.systems import System
from rnnstream import loadgen


@dataclass
class Settings:
    """The harness's run plan (from the command line)."""

    systems: list[str]
    streams: list[int]
    duration_s: float
    warmup_s: float
    reps: int
    chunk_steps: int
    chunk_streams: list[int]
    chunk_duration_s: float
    models: Path | None
    model: str
    server_args: list[str]
    extra: dict[str, str]
    out: Path | None
    plot: Path | None
    logs: Path | None
    timeout_s: float
    quick: bool
    label: str = ""
    workers: list[int] = field(default_factory=lambda: [1])  # rnnstream's --workers values
    clients: int = 1  # load-generator processes per run
    channels: int = 0  # per client process; 0: automatic (see ``split``)
    notes: list[str] = field(default_factory=list)


class PlannedRun(NamedTuple):
    """One load-generator run: which system (by index), how many streams, k, how long."""

    system: int
    streams: int
    steps: int
    duration_s: float


def plan(settings: Settings, systems: Sequence[System]) -> list[PlannedRun]:
    """Every run in order.

    Per repetition, per stream count, every system; the order rotates by one each
    repetition (A B C, then B C A, ...), so no system always runs right after another.
    """
    runs: list[PlannedRun] = []
    n = len(systems)
    for rep in range(settings.reps):
        order = [(rep + j) % n for j in range(n)]
        for streams in settings.streams:
            runs.extend(PlannedRun(i, streams, 1, settings.duration_s) for i in order)
        if settings.chunk_steps > 1:
            for streams in settings.chunk_streams:
                runs.extend(
                    PlannedRun(i, streams, settings.chunk_steps, settings.chunk_duration_s)
                    for i in order
                    if systems[i].chunks
                )
    return runs


class ClientShare(NamedTuple):
    """One load-generator process's part of a run: its streams and its channels (0: auto)."""

    streams: int
    channels: int


def split(streams: int, clients: int, channels: int = 0) -> list[ClientShare]:
    """A run's streams shared out as evenly as can be over at most ``clients`` processes.

    No process gets no stream, so a run of fewer streams than ``clients`` uses fewer
    processes. ``channels`` is each process's channel count (the load generator never
    opens more channels than streams); 0 is automatic: one process keeps the load
    generator's own rule (one channel per 32 streams, at most 4), as without ``clients``,
    while several processes each spread their streams over up to 4 channels, because a
    server of several worker processes gets its load spread over them by connection.
    """
    used = max(1, min(clients, streams))
    base, extra = divmod(streams, used)
    shares = [base + (1 if i < extra else 0) for i in range(used)]
    if channels == 0 and used > 1:
        return [ClientShare(n, min(n, loadgen.MAX_CHANNELS)) for n in shares]
    return [ClientShare(n, channels) for n in shares]
