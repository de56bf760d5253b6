"""The text the harness prints at the end: the tables of medians and the target checks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench.harness.aggregate import Cell


def _n(value: float | None, digits: int = 0) -> str:
    if value is None or value != value:
        return "-"
    return f"{value:,.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows)
    return "\n".join(lines)


def render(
    cells: Sequence[Cell], checks: Sequence[dict[str, Any]], subject: str = "rnnstream"
) -> str:
    """Every run's medians, ``subject``'s msg/s against the others', and the checks."""
    out = [_per_run(cells)]
    systems = list(dict.fromkeys(c.system for c in cells))
    if subject in systems and len(systems) > 1:
        out += ["", f"msg/s, lock-step k=1, and {subject} / other (same run):"]
        out.append(_ratios(cells, systems, subject))
    if checks:
        out += ["", "Targets:", *(_check_line(check) for check in checks)]
    return "\n".join(out)


def _per_run(cells: Sequence[Cell]) -> str:
    header = [
        "system",
        "streams",
        "k",
        "reps",
        "msg/s",
        "range",
        "steps/s",
        "p50 us",
        "p99 us",
        "srv cpu us/msg",
        "cli cpu us/msg",
        "errors",
    ]
    rows = [
        [
            c.system,
            str(c.streams),
            str(c.steps),
            str(c.reps),
            _n(c.msg_per_s),
            f"{_n(c.msg_per_s_min)}-{_n(c.msg_per_s_max)}",
            _n(c.timesteps_per_s),
            _n(c.p50_us),
            _n(c.p99_us),
            _n(c.server_cpu_us_per_msg),
            _n(c.client_cpu_us_per_msg),
            str(c.errors),
        ]
        for c in cells
    ]
    return "Per run (medians over repetitions; lock-step unless k > 1):\n" + _table(header, rows)


def _ratios(cells: Sequence[Cell], systems: Sequence[str], subject: str) -> str:
    by = {(c.system, c.streams, c.steps): c for c in cells}
    others = [s for s in systems if s != subject]
    header = ["streams", *systems, *[f"/{o}" for o in others]]
    rows = []
    for streams in sorted({c.streams for c in cells if c.steps == 1}):
        mine = by.get((subject, streams, 1))
        row = [str(streams)]
        row += [
            _n(by[(s, streams, 1)].msg_per_s) if (s, streams, 1) in by else "-" for s in systems
        ]
        for o in others:
            theirs = by.get((o, streams, 1))
            ratio = (
                mine.msg_per_s / theirs.msg_per_s
                if mine and theirs and theirs.msg_per_s > 0
                else None
            )
            row.append(_n(ratio, 2) + ("x" if ratio is not None else ""))
        rows.append(row)
    return _table(header, rows)


def _check_line(check: dict[str, Any]) -> str:
    extra = (
        f" ({check['per_server_cpu_second']:,} per server CPU-second)"
        if check.get("per_server_cpu_second")
        else ""
    )
    mark = "met" if check["met"] else "NOT met"
    return f"  {mark:<7}  {check['target']}: {check['value']:,}{extra}"
