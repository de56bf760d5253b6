"""The repetitions of each (system, streams, k) folded into medians."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from rnnstream import loadgen


@dataclass
class Cell:
    """The median of the repetitions of one (system, streams, k)."""

    system: str
    streams: int
    steps: int
    reps: int
    msg_per_s: float
    msg_per_s_min: float
    msg_per_s_max: float
    timesteps_per_s: float
    p50_us: float
    p99_us: float
    server_cpu_us_per_msg: float | None
    client_cpu_us_per_msg: float | None
    errors: int


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None and v == v]
    return statistics.median(present) if present else None


def summarize(results: Sequence[loadgen.LoadResult]) -> list[Cell]:
    """Medians per (system, streams, k), in first-seen order."""
    groups: dict[tuple[str, int, int], list[loadgen.LoadResult]] = {}
    for r in results:
        groups.setdefault((r.label, r.streams, r.steps_per_message), []).append(r)
    cells = []
    for (system, streams, steps), every in groups.items():
        # A repetition that failed (a crash) does not count towards the medians if others ran.
        rs = [r for r in every if r.errors == 0] or every
        rates = [r.msg_per_s for r in rs]
        cells.append(
            Cell(
                system=system,
                streams=streams,
                steps=steps,
                reps=len(rs),
                msg_per_s=statistics.median(rates),
                msg_per_s_min=min(rates),
                msg_per_s_max=max(rates),
                timesteps_per_s=statistics.median([r.timesteps_per_s for r in rs]),
                p50_us=_median([r.latency_us["p50"] for r in rs]) or float("nan"),
                p99_us=_median([r.latency_us["p99"] for r in rs]) or float("nan"),
                server_cpu_us_per_msg=_median([r.server_cpu_us_per_msg for r in rs]),
                client_cpu_us_per_msg=_median([r.client_cpu_us_per_msg for r in rs]),
                errors=sum(r.errors for r in every),
            )
        )
    return cells
