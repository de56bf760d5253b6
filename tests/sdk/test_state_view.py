"""``rnnstream stream --state-csv / --plot-state`` against a real server, and unit ordering."""

from __future__ import annotations

import csv
import io
import sys

import numpy as np
import pytest

from rnnstream.cli import main
from rnnstream.state_view import unit_order
from tests.conftest import TINY, TINY_M2O
from tests.sdk.conftest import rand, reference
from tests.sdk.test_cli_client import write_csv

ATOL = 1e-5


def read_rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def test_state_csv_and_plot_from_a_real_server(server, tmp_path, capsys):
    x = rand(40, 17)
    path = tmp_path / "in.csv"
    write_csv(path, ["a", "b"], x.tolist())
    states, png = tmp_path / "h.csv", tmp_path / "h.png"
    argv = ["stream", "--model", "tiny", "--csv", str(path), "--chunk", "5"]
    argv += ["--address", server.address, "--state-csv", str(states), "--plot-state", str(png)]
    assert main(argv) == 0
    printed = read_rows(capsys.readouterr().out)
    assert len(printed) == 1 + 17  # the predictions are printed as without the flags
    rows = read_rows(states.read_text())
    state_size = len(TINY.b_h)
    assert rows[0] == [f"h0_{i}" for i in range(state_size)]
    assert len(rows) == 1 + 17 and all(len(r) == state_size for r in rows[1:])
    got = np.array([[float(v) for v in r] for r in rows[1:]])
    np.testing.assert_allclose(got, reference(x)[1], atol=ATOL)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_many_to_one_prints_only_the_last_answer_but_keeps_every_state(server, tmp_path, capsys):
    x = rand(41, 9, f=3)
    path = tmp_path / "in.csv"
    write_csv(path, ["p", "q", "r"], x.tolist())
    states = tmp_path / "h.csv"
    argv = ["stream", "--model", "tiny-m2o", "--csv", str(path), "--address", server.address]
    assert main([*argv, "--state-csv", str(states)]) == 0
    printed = read_rows(capsys.readouterr().out)
    y, h = reference(x, m2o=True)
    assert len(printed) == 2  # header, the final y
    np.testing.assert_allclose([float(v) for v in printed[1]], y[-1], atol=ATOL)
    rows = read_rows(states.read_text())
    assert len(rows) == 1 + 9 and all(len(r) == len(TINY_M2O.b_h) for r in rows)
    np.testing.assert_allclose(np.array(rows[1:], dtype=float), h, atol=ATOL)


def test_plot_without_matplotlib_names_the_extra(server, tmp_path, capsys, monkeypatch):
    path = tmp_path / "in.csv"
    write_csv(path, ["a", "b"], rand(42, 3).tolist())
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    argv = ["stream", "--model", "tiny", "--csv", str(path), "--address", server.address]
    assert main([*argv, "--plot-state", str(tmp_path / "h.png")]) == 1
    assert "pip install 'rnnstream[train]'" in capsys.readouterr().err
    assert not (tmp_path / "h.png").exists()


def test_unit_order_puts_correlated_units_side_by_side():
    t = np.linspace(0, 8 * np.pi, 400)
    slow, fast = np.sin(t), np.sign(np.sin(7 * t))
    noise = np.random.default_rng(0).standard_normal((400, 6)) * 0.05
    # columns: slow, fast, slow, fast, -slow, fast, plus one constant unit
    units = np.stack([slow, fast, slow, fast, -slow, fast], axis=1) + noise
    units = np.concatenate([units, np.zeros((400, 1))], axis=1)
    order = list(unit_order(units))
    assert sorted(order) == list(range(7)) and order[-1] == 6
    position = {u: i for i, u in enumerate(order)}
    slow_at = sorted(position[u] for u in (0, 2, 4))
    fast_at = sorted(position[u] for u in (1, 3, 5))
    # each group (anti-correlated members included) is contiguous
    assert slow_at[-1] - slow_at[0] == 2 and fast_at[-1] - fast_at[0] == 2


def test_state_flags_are_in_help(capsys):
    with pytest.raises(SystemExit):
        main(["stream", "--help"])
    text = capsys.readouterr().out
    assert "--state-csv" in text and "--plot-state" in text and "rnnstream[train]" in text


def test_state_columns_follow_the_state_row_layout():
    from rnnstream.info import ModelInfo
    from rnnstream.state_view import state_columns

    lstm = ModelInfo("m", "1", 1, 1, 8, cell="lstm", layers=2, hidden_size=2)
    assert state_columns(lstm) == ["h0_0", "h0_1", "h1_0", "h1_1", "c0_0", "c0_1", "c1_0", "c1_1"]
    unknown = ModelInfo("m", "1", 1, 1, 3)  # a server that does not say the layout
    assert state_columns(unknown) == ["s0", "s1", "s2"]


def test_a_delay_line_is_named_by_lag_and_left_out_of_the_heat_map():
    from rnnstream.info import ModelInfo
    from rnnstream.state_view import state_columns

    one = ModelInfo("m", "1", 1, 1, 2 + 3, cell="gru", layers=1, hidden_size=2)
    assert state_columns(one) == ["h0_0", "h0_1", "lag2", "lag1", "lag0"]
    assert (one.cell_units, one.taps) == (2, 3)
    two = ModelInfo(
        "m", "1", 2, 1, 2 + 2 * 2, feature_names=("a", "b"), cell="rnn", layers=1, hidden_size=2
    )
    assert two.taps == 2
    assert state_columns(two)[2:] == ["lag1_a", "lag1_b", "lag0_a", "lag0_b"]
    # A remainder that is not whole input rows is no delay line: the layout is unknown.
    odd = ModelInfo("m", "1", 2, 1, 2 + 3, cell="gru", layers=1, hidden_size=2)
    assert (odd.cell_units, odd.taps) == (5, 0) and state_columns(odd) == [
        "s0",
        "s1",
        "s2",
        "s3",
        "s4",
    ]
