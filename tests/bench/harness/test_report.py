"""Medians, target checks and the printed tables, from made-up runs (no servers)."""

from __future__ import annotations

import dataclasses

from bench.harness import aggregate, report, results, targets
from bench.harness.aggregate import Cell
from rnnstream import loadgen


def _cell(
    system: str,
    streams: int,
    msg_per_s: float,
    steps: int = 1,
    server_cpu_us_per_msg: float | None = None,
) -> Cell:
    return Cell(
        system=system,
        streams=streams,
        steps=steps,
        reps=1,
        msg_per_s=msg_per_s,
        msg_per_s_min=msg_per_s,
        msg_per_s_max=msg_per_s,
        timesteps_per_s=msg_per_s * steps,
        p50_us=100.0,
        p99_us=200.0,
        server_cpu_us_per_msg=server_cpu_us_per_msg,
        client_cpu_us_per_msg=None,
        errors=0,
    )


CELLS = [
    _cell("echo", 1, 1000.0),
    _cell("rnnstream", 1, 900.0),
    _cell("echo", 16, 2000.0),
    _cell("rnnstream", 16, 1000.0),
    _cell("rnnstream", 1, 2500.0, steps=256, server_cpu_us_per_msg=256.0),
]


def test_checks_cover_what_the_run_measured() -> None:
    checks = targets.check(CELLS)
    # No triton or torchserve in the run: only the echo ratios and the chunk rate.
    assert checks == [
        {"target": "rnnstream >= 0.85x echo at 1 streams", "value": 0.9, "met": True},
        {"target": "rnnstream >= 0.85x echo at 16 streams", "value": 0.5, "met": False},
        {
            "target": "rnnstream >= 500,000 steps/s, 1 stream, k=256",
            "value": 640_000,
            "per_server_cpu_second": 1_000_000,
            "met": True,
        },
    ]


def test_report_shows_ratios_and_targets() -> None:
    text = report.render(CELLS, targets.check(CELLS))
    assert "msg/s, lock-step k=1, and rnnstream / other (same run):" in text
    assert "0.90x" in text and "0.50x" in text
    lines = text.splitlines()
    at = lines.index("Targets:")
    assert lines[at + 1 :] == [
        "  met      rnnstream >= 0.85x echo at 1 streams: 0.9",
        "  NOT met  rnnstream >= 0.85x echo at 16 streams: 0.5",
        "  met      rnnstream >= 500,000 steps/s, 1 stream, k=256: 640,000 "
        "(1,000,000 per server CPU-second)",
    ]


def test_report_without_checks_has_no_targets_section() -> None:
    text = report.render([_cell("echo", 1, 1000.0)], [])
    assert "Targets" not in text
    assert "/" not in text.splitlines()[-1]


def test_failed_repetition_is_left_out_of_the_medians_but_counted() -> None:
    spec = loadgen.LoadSpec(target="127.0.0.1:1", streams=2, label="rnnstream")
    failed = results.failed(spec, "boom")
    good = [
        dataclasses.replace(failed, errors=0, error_messages=[], msg_per_s=rate)
        for rate in (100.0, 300.0)
    ]
    (cell,) = aggregate.summarize([good[0], failed, good[1]])
    assert (cell.reps, cell.msg_per_s, cell.msg_per_s_min, cell.errors) == (2, 200.0, 100.0, 2)
