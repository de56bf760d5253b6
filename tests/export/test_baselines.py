"""The baselines a model is scored against: naive ones by hand, classical fits by property."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rnnstream.export import baselines
from rnnstream.export.data import DataError, Series, Split, time_split
from rnnstream.export.train import Predictions


def series_of(
    x: np.ndarray,
    y: np.ndarray,
    *,
    horizon: int = 1,
    season: int = 0,
    classical: str = "",
) -> Series:
    """A one-output series with the given inputs ``[N, F]`` and targets ``[N]``."""
    return Series(
        name="toy",
        source="test",
        x=x.astype(np.float32),
        y=y[:, None].astype(np.float32),
        baseline=x[:, :1].astype(np.float32),
        feature_names=[f"f{i}" for i in range(x.shape[1])],
        output_names=["y"],
        baseline_name="persistence",
        rows=len(x),
        horizon=horizon,
        return_sequences=True,
        season=season,
        classical=classical,
    )


def readings(z: np.ndarray, horizon: int = 1, **kwargs: object) -> Series:
    """Forecast reading ``z[t + horizon]`` from reading ``z[t]``."""
    n = len(z) - horizon
    return series_of(z[:n, None], z[horizon:], horizon=horizon, **kwargs)  # type: ignore[arg-type]


def test_persistence_and_seasonal_naive_by_hand():
    z = np.array([10.0, 11, 13, 16, 20, 25, 31, 38])
    one = readings(z, season=3)  # y[t] = z[t + 1]
    assert baselines.persistence(one).forecast[:, 0] == pytest.approx(
        [math.nan, 11, 13, 16, 20, 25, 31], nan_ok=True
    )  # y[t - 1] = z[t], the current reading
    assert baselines.seasonal_naive(one, 3).forecast[:, 0] == pytest.approx(
        [math.nan] * 3 + [11, 13, 16, 20], nan_ok=True
    )  # y[t - 3] = z[t - 2]: the value one season before the target's time t + 1
    two = readings(z, horizon=2)  # y[t] = z[t + 2]
    assert baselines.persistence(two).forecast[:, 0] == pytest.approx(
        [math.nan, math.nan, 13, 16, 20, 25], nan_ok=True
    )  # y[t - 2] = z[t]
    # horizon 4, season 3: the target's time t + 4 minus two seasons, y[t - 6] = z[t - 2]
    four = readings(np.arange(100.0, 112.0), horizon=4)
    assert baselines.seasonal_naive(four, 3).forecast[:, 0] == pytest.approx(
        [math.nan] * 6 + [104, 105], nan_ok=True
    )
    with pytest.raises(DataError, match="season"):
        baselines.seasonal_naive(one, 0)


def test_compare_scores_every_baseline_on_the_models_points():
    z = np.array([10.0, 11, 13, 16, 20, 25, 31, 38])
    series = readings(z, season=3)
    found = [baselines.persistence(series), baselines.seasonal_naive(series, 3)]
    rows = np.arange(2, 7)  # row 2 has no seasonal naive yet: left out for all
    model = series.y[rows] + np.array([[1.0], [1.0], [-1.0], [1.0], [-1.0]])
    pred = Predictions(model=model, truth=series.y[rows], baseline=series.x[rows], rows=rows)
    compared = baselines.compare(pred, found, 3)
    assert compared["points"] == 4 and compared["season"] == 3
    assert compared["model_rmse"] == pytest.approx(1.0) and compared["model_mae"] == 1.0
    # truth z[4..7] = 20, 25, 31, 38; persistence z[3..6] = 16, 20, 25, 31: errors 4, 5, 6, 7
    assert compared["persistence"]["rmse"] == pytest.approx(math.sqrt((16 + 25 + 36 + 49) / 4))
    assert compared["persistence"]["mae"] == pytest.approx(5.5)
    assert compared["persistence"]["rmse_ratio"] == pytest.approx(
        1.0 / math.sqrt((16 + 25 + 36 + 49) / 4), rel=1e-5
    )
    # seasonal naive z[1..4] = 11, 13, 16, 20: errors 9, 12, 15, 18
    assert compared["seasonal_naive"]["mae"] == pytest.approx(13.5)
    assert compared["strongest"] == "persistence" and compared["classical"] == ""
    text = baselines.table("toy", "model", compared)
    assert "seasonal naive (3)" in text and "persistence" in text


def ar_seasonal(n: int, season: int, seed: int) -> np.ndarray:
    """An AR(1) process around a seasonal profile: what a seasonal ARIMA should model well."""
    gen = np.random.default_rng(seed)
    profile = 5.0 * np.sin(2 * np.pi * np.arange(season) / season)
    noise = np.zeros(n)
    for t in range(1, n):
        noise[t] = 0.8 * noise[t - 1] + gen.standard_normal()
    return 50.0 + profile[np.arange(n) % season] + noise


def rmse_on_test(series: Series, split: Split, found: baselines.Baseline) -> float:
    a, b = split.test
    return float(np.sqrt(np.mean((found.forecast[a:b] - series.y[a:b]) ** 2)))


def test_sarima_beats_persistence_on_an_ar_plus_seasonal_series():
    series = readings(ar_seasonal(301, 6, seed=3), season=6, classical="sarima")
    split = time_split(len(series), gap=1)
    sarima = baselines.sarima(series, split)
    assert sarima.spec == "SARIMA(2,0,1)(1,0,1,6)" and sarima.name == "sarima"
    assert np.isfinite(sarima.forecast[split.test[0] :]).all()
    persistence = rmse_on_test(series, split, baselines.persistence(series))
    assert rmse_on_test(series, split, sarima) < 0.9 * persistence


def test_sarima_is_fitted_on_the_training_part_only():
    z = ar_seasonal(241, 6, seed=4)
    series = readings(z, season=6, classical="sarima")
    split = time_split(len(series), gap=1)
    changed_z = z.copy()
    changed_z[split.val[0] + 1 :] += 7.0  # every target outside the training part
    changed = readings(changed_z, season=6, classical="sarima")
    first, second = baselines.sarima(series, split), baselines.sarima(changed, split)
    assert first.params == pytest.approx(second.params)
    a, b = split.train
    np.testing.assert_allclose(first.forecast[a:b], second.forecast[a:b])


def simulate_garch(
    n: int, omega: float, alpha: float, beta: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Percent returns of a GARCH(1,1) with zero mean, and their conditional variances."""
    gen = np.random.default_rng(seed)
    returns, variance = np.zeros(n), np.zeros(n)
    variance[0] = omega / (1 - alpha - beta)
    for t in range(n):
        if t:
            variance[t] = omega + alpha * returns[t - 1] ** 2 + beta * variance[t - 1]
        returns[t] = math.sqrt(variance[t]) * gen.standard_normal()
    return returns, variance


def volatility_series(returns: np.ndarray, horizon: int = 5) -> Series:
    """Like msft-vol: input the return, target sqrt(mean of the next horizon squared returns)."""
    n = len(returns) - horizon
    squares = returns**2
    target = np.array([np.sqrt(squares[t + 1 : t + 1 + horizon].mean()) for t in range(n)])
    x = np.stack([returns[:n], np.abs(returns[:n])], axis=1)
    return series_of(x, target, horizon=horizon, season=5, classical="garch")


def test_garch_recovers_its_parameters_and_beats_a_constant_volatility():
    returns, _ = simulate_garch(4000, omega=0.1, alpha=0.1, beta=0.85, seed=5)
    series = volatility_series(returns)
    split = time_split(len(series), gap=5)
    garch = baselines.garch(series, split)
    assert garch.spec == "GARCH(1,1)" and garch.name == "garch"
    assert garch.params["alpha[1]"] == pytest.approx(0.1, abs=0.05)
    assert garch.params["beta[1]"] == pytest.approx(0.85, abs=0.08)
    a, b = split.train
    constant = np.sqrt(np.mean(returns[a:b] ** 2))
    ta, tb = split.test
    truth = series.y[ta:tb, 0]
    assert rmse_on_test(series, split, garch) < np.sqrt(np.mean((constant - truth) ** 2))


def test_garch_is_fitted_on_the_training_part_only():
    returns, _ = simulate_garch(1500, omega=0.1, alpha=0.1, beta=0.85, seed=6)
    series = volatility_series(returns)
    split = time_split(len(series), gap=5)
    changed_returns = returns.copy()
    changed_returns[split.train[1] :] *= 3.0
    first = baselines.garch(series, split)
    second = baselines.garch(volatility_series(changed_returns), split)
    assert first.params == pytest.approx(second.params)
    a, b = split.train
    np.testing.assert_allclose(first.forecast[a:b], second.forecast[a:b], rtol=1e-6)


def test_baselines_follow_the_series_and_can_skip_the_classical_fit():
    series = readings(ar_seasonal(241, 12, seed=7), season=12, classical="sarima")
    split = time_split(len(series), gap=1)
    assert [b.name for b in baselines.baselines(series, split, classical=False)] == [
        "persistence",
        "seasonal_naive",
    ]
    assert baselines.classical_spec(series) == "SARIMA(2,0,1)(1,0,1,12)"
    plain = readings(ar_seasonal(241, 12, seed=7))
    assert [b.name for b in baselines.baselines(plain, split, classical=False)] == ["persistence"]
    assert baselines.classical_spec(plain) == ""
