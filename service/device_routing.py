"""Pick CPU or CUDA for each call by its measured cost, so ``--device auto`` is never slower.

A call on CUDA costs about the same at any small batch (the launch, the copies), a call
on CPU grows with the batch: the GPU pays only past some batch size, and a chunk through
the sequence graph is slower on CUDA at small batches. With ``--device auto`` on a GPU
machine a graph keeps a CPU session beside its CUDA one; at start-up both are timed at a
few batch sizes (a ``CostTable`` each) and every call goes where its batch costs less.
The crossover points (where the cheaper side changes) are logged.
"""

from __future__ import annotations

import bisect
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

CPU_SIDE = "cpu"
CUDA_SIDE = "cuda"

# Batch sizes timed at start-up; costs between them are interpolated, past the last
# extrapolated along the last segment.
STEP_SIZES = (1, 4, 16, 64, 256, 1024, 4096)
# A chunk is timed at CHUNK_STEPS steps per sequence and scaled by its own length.
CHUNK_SIZES = (1, 16, 256)
CHUNK_STEPS = 8


@dataclass(frozen=True)
class CostTable:
    """Measured microseconds per call at increasing batch sizes (rows of ``x``)."""

    sizes: tuple[int, ...]
    micros: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.sizes or len(self.sizes) != len(self.micros):
            raise ValueError("a cost table needs one cost per size, and at least one")
        if list(self.sizes) != sorted(set(self.sizes)):
            raise ValueError(f"sizes must increase: {self.sizes}")

    def cost(self, rows: int) -> float:
        """Interpolated microseconds for a call of ``rows`` rows."""
        sizes, micros = self.sizes, self.micros
        if len(sizes) == 1 or rows <= sizes[0]:
            return micros[0]
        i = min(bisect.bisect_left(sizes, rows), len(sizes) - 1)
        x0, x1, y0, y1 = sizes[i - 1], sizes[i], micros[i - 1], micros[i]
        return y0 + (y1 - y0) * (rows - x0) / (x1 - x0)


def cheaper_side(rows: int, cpu: CostTable, cuda: CostTable) -> str:
    """``CUDA_SIDE`` when a call of ``rows`` costs less there, else ``CPU_SIDE`` (ties: CPU)."""
    return CUDA_SIDE if cuda.cost(rows) < cpu.cost(rows) else CPU_SIDE


def crossovers(cpu: CostTable, cuda: CostTable, largest: int) -> list[tuple[int, str]]:
    """Where the cheaper side changes, as ``(first batch size, side from there on)``.

    ``[(1, "cpu"), (600, "cuda")]``: CPU up to 599 rows, CUDA from 600 (up to ``largest``).
    """
    points: list[tuple[int, str]] = []
    for rows in range(1, largest + 1):
        side = cheaper_side(rows, cpu, cuda)
        if not points or points[-1][1] != side:
            points.append((rows, side))
    return points


def measure(
    run: Callable[[np.ndarray, np.ndarray], object],
    sizes: Sequence[int],
    n_features: int,
    state_size: int,
    steps: int = 0,
    repeats: int = 5,
) -> CostTable:
    """Time ``run(x, state)`` at each batch size: the median of ``repeats`` calls, in us.

    ``steps`` > 0 times a sequence graph (``x [B, steps, F]``). Two calls per size run
    first, untimed: they capture a CUDA graph or allocate, which later calls do not pay.
    """
    micros = []
    for rows in sizes:
        lead = (rows, steps) if steps else (rows,)
        x = np.zeros((*lead, n_features), np.float32)
        state = np.zeros((rows, state_size), np.float32)
        micros.append(median_call_us(run, x, state, repeats))
    return CostTable(tuple(sizes), tuple(micros))


def median_call_us(
    run: Callable[[np.ndarray, np.ndarray], object],
    x: np.ndarray,
    state: np.ndarray,
    repeats: int,
) -> float:
    """Median microseconds of ``run(x, state)`` over ``repeats`` calls, after two untimed."""
    run(x, state)
    run(x, state)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(x, state)
        times.append((time.perf_counter() - start) * 1e6)
    return statistics.median(times)


@dataclass(frozen=True)
class DeviceRouter:
    """Costs of one graph on each side; says where a call of a batch should run.

    A sequence graph's tables are measured at ``CHUNK_STEPS`` steps per sequence; both
    sides' costs grow about linearly in T, so the batch size alone decides for any T.
    """

    cpu: CostTable
    cuda: CostTable

    def side(self, rows: int) -> str:
        """Where a call of ``rows`` sequences runs cheaper."""
        return cheaper_side(rows, self.cpu, self.cuda)

    def describe(self) -> str:
        """``cpu from 1, cuda from 600``: the crossover points up to the largest size timed."""
        largest = max(self.cpu.sizes[-1], self.cuda.sizes[-1])
        points = crossovers(self.cpu, self.cuda, largest)
        return ", ".join(f"{side} from {rows}" for rows, side in points)
