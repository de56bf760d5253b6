"""The run plan: the settings from the command line and the interleaved order of the runs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from bench.harness.systems import System


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
