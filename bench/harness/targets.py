"""rnnstream's throughput targets, checked against the medians of one run.

Every target compares systems measured in the same run (or, for chunked messages, a rate
the model itself bounds), so a slow or busy machine shifts both sides alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench.harness.aggregate import Cell


@dataclass(frozen=True)
class RatioTarget:
    """The subject's msg/s at least ``ratio`` x ``other``'s, lock-step k=1, at ``streams``."""

    other: str
    ratio: float
    streams: tuple[int, ...]


RATIO_TARGETS: tuple[RatioTarget, ...] = (
    # The echo server is the transport floor (gRPC + protobuf + asyncio, no model): the
    # sessions, the model and the state may cost at most 15% of what the transport allows.
    RatioTarget("echo", 0.85, (1, 16, 128)),
    # General-purpose servers stepping the same model through their sequence batchers: a
    # server built for per-step streams should be well ahead of them, alone and under load.
    RatioTarget("triton", 2.5, (1, 64)),
    RatioTarget("torchserve", 10.0, (1, 64)),
)

# Chunked messages (k > 1 steps each) spread the transport over many steps, so their rate
# is bounded by the recurrent model: time steps per second a server should reach.
CHUNK_TARGET_STEPS_PER_S = 500_000


def check(cells: Sequence[Cell], subject: str = "rnnstream") -> list[dict[str, Any]]:
    """One check per target that this run measured: what, the value, and whether it is met.

    A ratio is checked where both systems ran at that stream count; the chunk rate at every
    chunked run of the subject (with the rate per second of server CPU beside it).
    """
    by = {(c.system, c.streams, c.steps): c for c in cells}
    checks: list[dict[str, Any]] = []
    for target in RATIO_TARGETS:
        for streams in target.streams:
            mine = by.get((subject, streams, 1))
            theirs = by.get((target.other, streams, 1))
            if mine is None or theirs is None or theirs.msg_per_s <= 0:
                continue
            ratio = mine.msg_per_s / theirs.msg_per_s
            checks.append(
                {
                    "target": f"{subject} >= {target.ratio:g}x {target.other} at {streams} streams",
                    "value": round(ratio, 3),
                    "met": ratio >= target.ratio,
                }
            )
    for c in cells:
        if c.system == subject and c.steps > 1:
            per_core = 1e6 * c.steps / c.server_cpu_us_per_msg if c.server_cpu_us_per_msg else None
            checks.append(
                {
                    "target": f"{subject} >= {CHUNK_TARGET_STEPS_PER_S:,} steps/s, "
                    f"{c.streams} stream{'s' if c.streams != 1 else ''}, k={c.steps}",
                    "value": round(c.timesteps_per_s),
                    "per_server_cpu_second": None if per_core is None else round(per_core),
                    "met": c.timesteps_per_s >= CHUNK_TARGET_STEPS_PER_S,
                }
            )
    return checks
