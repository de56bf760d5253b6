"""The interleaved order of the runs."""

from __future__ import annotations

from bench.harness import cli, plan
from bench.harness.systems import System


def test_interleaved_plan_rotates_systems() -> None:
    settings = cli.parse(
        ["--streams", "1,16", "--reps", "2", "--chunk-steps", "8", "--chunk-streams", "1,4"]
    )
    systems = [System(name, ["true"]) for name in ("a", "b")]
    order = [("ab"[i], streams, k) for i, streams, k, _ in plan.plan(settings, systems)]
    assert order == [
        ("a", 1, 1), ("b", 1, 1), ("a", 16, 1), ("b", 16, 1),
        ("a", 1, 8), ("b", 1, 8), ("a", 4, 8), ("b", 4, 8),
        ("b", 1, 1), ("a", 1, 1), ("b", 16, 1), ("a", 16, 1),
        ("b", 1, 8), ("a", 1, 8), ("b", 4, 8), ("a", 4, 8),
    ]  # fmt: skip


def test_chunked_runs_skip_systems_that_take_one_step_per_message() -> None:
    settings = cli.parse(
        ["--streams", "1", "--reps", "1", "--chunk-steps", "8", "--chunk-streams", "2"]
    )
    systems = [System("a", ["true"]), System("b", ["true"], chunks=False)]
    runs = plan.plan(settings, systems)
    assert [(r.system, r.streams, r.steps) for r in runs] == [(0, 1, 1), (1, 1, 1), (0, 2, 8)]
