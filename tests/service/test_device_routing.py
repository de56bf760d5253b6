"""Routing each call to CPU or CUDA by measured cost, with fake cost tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rnnstream.server.device_routing import (
    CPU_SIDE,
    CUDA_SIDE,
    CostTable,
    DeviceRouter,
    cheaper_side,
    crossovers,
    measure,
)
from rnnstream.server.graph import StepGraph
from tests.conftest import TINY

# Shaped like the H200 step measurements: CPU grows with B, CUDA is ~flat.
CPU_COSTS = CostTable((1, 256, 4096), (17.0, 147.0, 2194.0))
CUDA_COSTS = CostTable((1, 256, 4096), (54.5, 60.3, 73.8))


def test_costs_interpolate_between_and_extrapolate_past_the_sizes():
    table = CostTable((1, 11, 21), (10.0, 20.0, 40.0))
    assert table.cost(1) == 10.0 and table.cost(0) == 10.0
    assert table.cost(6) == pytest.approx(15.0)
    assert table.cost(16) == pytest.approx(30.0)
    assert table.cost(31) == pytest.approx(60.0)  # along the last segment
    with pytest.raises(ValueError):
        CostTable((4, 1), (1.0, 2.0))


@pytest.mark.parametrize("rows", [1, 2, 37, 64, 100, 256, 1000, 4096, 65536])
def test_the_cheaper_side_is_chosen_never_the_slower(rows):
    side = cheaper_side(rows, CPU_COSTS, CUDA_COSTS)
    chosen = (CPU_COSTS if side == CPU_SIDE else CUDA_COSTS).cost(rows)
    assert chosen == min(CPU_COSTS.cost(rows), CUDA_COSTS.cost(rows))


def test_crossover_points_are_where_the_cheaper_side_changes():
    points = crossovers(CPU_COSTS, CUDA_COSTS, 4096)
    assert points[0] == (1, CPU_SIDE)
    assert [side for _, side in points] == [CPU_SIDE, CUDA_SIDE]
    at = points[1][0]
    assert CUDA_COSTS.cost(at) < CPU_COSTS.cost(at)
    assert CUDA_COSTS.cost(at - 1) >= CPU_COSTS.cost(at - 1)
    router = DeviceRouter(CPU_COSTS, CUDA_COSTS)
    assert router.describe() == f"cpu from 1, cuda from {at}"
    # A CUDA side that is never cheaper has no crossover: everything stays on CPU.
    assert crossovers(CPU_COSTS, CostTable((1,), (1e9,)), 4096) == [(1, CPU_SIDE)]


def test_measure_times_every_size_with_warm_up_calls() -> None:
    shapes: list[tuple[tuple[int, ...], tuple[int, ...]]] = []

    def run(x: np.ndarray, state: np.ndarray) -> None:
        shapes.append((x.shape, state.shape))

    table = measure(run, (1, 4), n_features=2, state_size=3, steps=5, repeats=3)
    assert table.sizes == (1, 4) and all(us >= 0 for us in table.micros)
    assert shapes == [((1, 5, 2), (1, 3))] * 5 + [((4, 5, 2), (4, 3))] * 5


def test_a_routed_graph_sends_each_call_to_the_cheaper_side(tmp_path: Path):
    directory = tmp_path / "tiny"
    manifest = TINY.write(directory, "tiny", "1")
    # Both sides are CPU sessions here (the "CUDA" one on the bucketed path, as on CUDA);
    # only which one runs is observed.
    main = StepGraph(directory / "model.onnx", manifest, device="cpu", bucketed=True)
    cpu = StepGraph(directory / "model.onnx", manifest, device="cpu")
    ran: list[tuple[str, int]] = []
    for name, graph, method in (("main", main, "_run_here"), ("cpu", cpu, "run")):
        inner = getattr(graph, method)

        def spy(x, state, name=name, inner=inner):
            ran.append((name, len(x)))
            return inner(x, state)

        setattr(graph, method, spy)
    main.route_with(cpu, DeviceRouter(CPU_COSTS, CUDA_COSTS))
    at = crossovers(CPU_COSTS, CUDA_COSTS, 4096)[1][0]
    for rows in (1, at - 1, at, 4096):
        x = np.zeros((rows, manifest.n_features), np.float32)
        y, _ = main.run(x, np.zeros((rows, manifest.state_size), np.float32))
        assert y.shape == (rows, manifest.n_outputs)
    assert ran == [("cpu", 1), ("cpu", at - 1), ("main", at), ("main", 4096)]
