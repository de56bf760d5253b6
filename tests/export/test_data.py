"""Datasets: documented row counts, alignment, time split, statistics from train only."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from rnnstream.export import data


def test_seattle_has_the_documented_rows_and_next_hour_targets():
    series = data.load_seattle_temp()
    assert series.rows == data.SEATTLE_ROWS == 8759
    assert len(series) == 8758  # the last reading has no next hour
    assert series.n_features == 1 and series.n_outputs == 1
    np.testing.assert_array_equal(series.y[:-1, 0], series.x[1:, 0])  # y_t = temp_{t+1}
    np.testing.assert_array_equal(series.baseline, series.x)  # persistence
    assert series.index[0] == "2010/01/01 00:00"
    assert series.return_sequences


def test_msft_has_the_documented_rows_and_follows_its_recipe():
    series = data.load_msft_vol(window=20, horizon=5)
    prices = data.read_msft_prices()
    assert series.rows == data.MSFT_ROWS == 7983 == len(prices)
    assert len(series) == 7983 - 1 - 5  # one row lost to the first return, 5 to the target
    assert series.feature_names == ["log_return_pct", "log_range_pct"]
    assert not series.return_sequences
    t = 4000  # row t is trading day t + 1
    close, high, low = prices["Close"], prices["High"], prices["Low"]
    assert series.x[t, 0] == pytest.approx(100 * np.log(close[t + 1] / close[t]), rel=1e-5)
    assert series.x[t, 1] == pytest.approx(100 * np.log(high[t + 1] / low[t + 1]), rel=1e-5)
    future = 100 * np.log(close[t + 2 : t + 7].to_numpy() / close[t + 1 : t + 6].to_numpy())
    assert series.y[t, 0] == pytest.approx(np.sqrt(np.mean(future**2)), rel=1e-5)
    past = series.x[t - 19 : t + 1, 0].astype(np.float64)
    assert series.baseline[t, 0] == pytest.approx(np.sqrt(np.mean(past**2)), rel=1e-4)
    assert np.isnan(series.baseline[18, 0]) and np.isfinite(series.baseline[19, 0])


def test_time_split_is_ordered_disjoint_and_complete():
    split = data.time_split(1000)
    assert split.train == (0, 700) and split.val == (700, 800) and split.test == (800, 1000)
    parts = [split.train, split.val, split.test]
    for (a0, b0), (a1, b1) in itertools.pairwise(parts):
        assert b0 == a1 and a0 < b0 < b1
    assert sum(split.sizes().values()) == 1000


def test_time_split_gap_keeps_every_target_inside_its_part():
    horizon = 5
    split = data.time_split(1000, gap=horizon)
    assert split.train == (0, 695) and split.val == (700, 795) and split.test == (800, 1000)
    # row t's target is at time t + horizon: the last one of each part stays in that part
    assert split.train[1] - 1 + horizon < split.val[0]
    assert split.val[1] - 1 + horizon < split.test[0]


def test_time_split_refuses_too_few_rows():
    with pytest.raises(data.DataError, match="too few"):
        data.time_split(10)


def test_stats_come_from_the_training_part_only():
    series = data.load_synthetic(rows=500)
    split = data.time_split(len(series))
    stats = data.fit_stats(series, split)
    a, b = split.train
    np.testing.assert_allclose(stats.x_mean, series.x[a:b].mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(stats.y_std, series.y[a:b].std(axis=0), rtol=1e-6)
    series.x[b:] += 1000.0  # val and test change: the statistics must not
    series.y[b:] *= 50.0
    again = data.fit_stats(series, split)
    np.testing.assert_array_equal(again.x_mean, stats.x_mean)
    np.testing.assert_array_equal(again.y_std, stats.y_std)


def test_synthetic_is_seeded():
    a, b, c = data.load_synthetic(seed=1), data.load_synthetic(seed=1), data.load_synthetic(seed=2)
    assert len(a) == data.SYNTHETIC_ROWS
    np.testing.assert_array_equal(a.x, b.x)
    assert not np.array_equal(a.x, c.x)


def test_sequence_windows_shapes_and_content():
    x = np.arange(20, dtype=np.float32).reshape(10, 2)
    y = np.arange(10, dtype=np.float32).reshape(10, 1)
    xw, yw = data.sequence_windows(x, y, window=4, stride=3)
    assert xw.shape == (3, 4, 2) and yw.shape == (3, 4, 1)
    np.testing.assert_array_equal(yw[1, :, 0], [3, 4, 5, 6])


def test_csv_loader(tmp_path: Path):
    path = tmp_path / "sensors.csv"
    rows = ["time,temp,humidity,label"] + [
        f"2024-01-01T{i % 24:02d},{20 + i * 0.1:.2f},{50 + i % 7},x" for i in range(40)
    ]
    path.write_text("\n".join(rows) + "\n")
    series = data.load(
        "" + str(path), window=8, horizon=2, features=["temp", "humidity"], targets=["temp"]
    )
    assert series.name == "sensors" and series.rows == 40 and len(series) == 38
    assert series.feature_names == ["temp", "humidity"] and series.output_names == ["temp_next_2"]
    np.testing.assert_allclose(series.y[:, 0], [*series.x[2:40, 0].tolist(), 23.8, 23.9], rtol=1e-6)
    np.testing.assert_array_equal(series.baseline[:, 0], series.x[:, 0])
    assert series.index[0] == "2024-01-01T00"


def test_csv_errors_say_what_to_fix(tmp_path: Path):
    path = tmp_path / "two.csv"
    path.write_text("a,b\n" + "\n".join(f"{i},{i * 2}" for i in range(30)) + "\n")
    with pytest.raises(data.DataError, match="--targets"):
        data.load(str(path), window=8, horizon=1)
    with pytest.raises(data.DataError, match="no column 'c'"):
        data.load(str(path), window=8, horizon=1, targets=["c"])
    with pytest.raises(data.DataError, match="neither a dataset"):
        data.load("nope", window=8, horizon=1)
    with pytest.raises(data.DataError, match="apply to a CSV"):
        data.load("seattle-temp", window=8, horizon=1, targets=["temp"])
