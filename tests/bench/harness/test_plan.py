"""The interleaved order of the runs, and a run's streams split over client processes."""

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


def test_streams_are_split_evenly_over_the_clients() -> None:
    assert [s.streams for s in plan.split(16, 2)] == [8, 8]
    assert [s.streams for s in plan.split(7, 3)] == [3, 2, 2]
    assert [s.streams for s in plan.split(1024, 2)] == [512, 512]


def test_no_client_gets_no_stream() -> None:
    assert [s.streams for s in plan.split(1, 4)] == [1]
    assert [s.streams for s in plan.split(3, 8)] == [1, 1, 1]


def test_one_client_keeps_the_load_generators_own_channel_rule() -> None:
    assert plan.split(128, 1) == [plan.ClientShare(128, 0)]
    assert plan.split(1, 2) == [plan.ClientShare(1, 0)]  # one stream: one client


def test_several_clients_spread_each_share_over_up_to_four_channels() -> None:
    assert plan.split(16, 2) == [plan.ClientShare(8, 4), plan.ClientShare(8, 4)]
    assert plan.split(4, 2) == [plan.ClientShare(2, 2), plan.ClientShare(2, 2)]
    assert plan.split(1024, 2) == [plan.ClientShare(512, 4), plan.ClientShare(512, 4)]


def test_channels_given_apply_to_every_client() -> None:
    assert plan.split(16, 2, channels=1) == [plan.ClientShare(8, 1), plan.ClientShare(8, 1)]
    assert plan.split(16, 1, channels=3) == [plan.ClientShare(16, 3)]
