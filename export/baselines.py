"""What a forecaster tries first: one-step-ahead baselines every trained model is scored against.

Each baseline is a forecast for every row of a :class:`~rnnstream.export.data.Series` (NaN
where it is undefined), made from data known at that row only, so it is scored on exactly
the model's target points with the same RMSE/MAE as the model:

- ``persistence``: the latest target value already observed, ``y[t - horizon]`` (for a
  forecast of the next reading, the current reading);
- ``seasonal_naive``: the target value one season earlier (the same hour yesterday for
  hourly data; for daily trading data the season is a week of 5 days);
- the classical model of the field, fitted on the training part only, its parameters then
  fixed and its filter run over the whole series:

  - ``sarima``: seasonal ARIMA(2,0,1)(1,0,1,season) with a constant (statsmodels), the
    one-step-ahead prediction of the Kalman filter at every row;
  - ``garch``: GARCH(1,1) with a constant mean on the percent log returns (the ``arch``
    package); the forecast of ``sqrt(mean of the next horizon squared returns)`` is
    ``sqrt(mean over those days of (mean^2 + forecast variance))``, the expected squared
    return, which is what the volatility target averages.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rnnstream.export.data import DataError, Series, Split
from rnnstream.export.train import Predictions

SARIMA_ORDER: tuple[int, int, int] = (2, 0, 1)
SARIMA_SEASONAL: tuple[int, int, int] = (1, 0, 1)  # (P, D, Q); the season comes from the data
GARCH_ORDER: tuple[int, int] = (1, 1)


@dataclass(frozen=True)
class Baseline:
    """One baseline's forecast for every row of a series, ``[N, O]`` raw units, NaN if undefined."""

    name: str  # persistence | seasonal_naive | sarima | garch (the manifest key)
    spec: str  # what it is, e.g. "SARIMA(2,0,1)(1,0,1,24)"
    forecast: np.ndarray
    params: dict[str, float] = field(default_factory=dict)  # fitted on the training part


def persistence(series: Series) -> Baseline:
    """``y[t - horizon]``: the latest target value known at row ``t``."""
    h = series.horizon
    forecast = np.full(series.y.shape, np.nan, dtype=np.float64)
    forecast[h:] = series.y[:-h]
    return Baseline("persistence", "persistence", forecast)


def seasonal_naive(series: Series, season: int) -> Baseline:
    """The target one season earlier: ``y[t - season * (k + 1)]``, ``k = (horizon - 1) // season``.

    ``k`` whole seasons more when the horizon is longer than a season, so the value used is
    always known at row ``t``.
    """
    if season < 1:
        raise DataError(f"{series.name}: a seasonal naive forecast needs a season, got {season}")
    lag = season * ((series.horizon - 1) // season + 1)
    forecast = np.full(series.y.shape, np.nan, dtype=np.float64)
    forecast[lag:] = series.y[:-lag]
    return Baseline("seasonal_naive", f"seasonal naive ({season})", forecast)


def sarima_spec(season: int) -> str:
    """The SARIMA model's name, e.g. ``SARIMA(2,0,1)(1,0,1,24)`` (``ARIMA(2,0,1)`` if none)."""
    order = ",".join(map(str, SARIMA_ORDER))
    if season < 2:
        return f"ARIMA({order})"
    return f"SARIMA({order})({','.join(map(str, SARIMA_SEASONAL))},{season})"


def sarima(series: Series, split: Split) -> Baseline:
    """One-step-ahead SARIMA forecasts of a one-output, one-step-ahead series.

    Fitted (maximum likelihood) on the targets of the training part only; then the fitted
    parameters are applied, unchanged, to the whole target series and the Kalman filter's
    one-step-ahead prediction at row ``t`` uses the targets of rows before ``t`` only.
    """
    from statsmodels.tsa.statespace.sarimax import SARIMAX

    if series.n_outputs != 1 or series.horizon != 1:
        raise DataError(
            f"{series.name}: the SARIMA baseline forecasts one output one step ahead, not "
            f"{series.n_outputs} output(s) {series.horizon} step(s) ahead"
        )
    y = series.y[:, 0].astype(np.float64)
    a, b = split.train
    seasonal = (*SARIMA_SEASONAL, series.season) if series.season >= 2 else (0, 0, 0, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter; the test score says how it went
        fitted = SARIMAX(y[a:b], order=SARIMA_ORDER, seasonal_order=seasonal, trend="c").fit(
            disp=False
        )
        predicted = fitted.apply(y).fittedvalues  # [N] one step ahead, parameters fixed
    params = dict(zip(fitted.model.param_names, map(float, fitted.params), strict=True))
    return Baseline("sarima", sarima_spec(series.season), predicted[:, None], params)


def garch_spec() -> str:
    """``GARCH(1,1)``."""
    return f"GARCH({GARCH_ORDER[0]},{GARCH_ORDER[1]})"


def garch(series: Series, split: Split) -> Baseline:
    """GARCH(1,1) forecasts of the realised volatility over the next ``horizon`` days.

    Input column 0 must be the percent log return and the target
    ``sqrt(mean of the next horizon squared returns)``. Fitted on the returns of the
    training part only; with the parameters fixed, the conditional variance is filtered
    through the whole series and, at row ``t`` (returns up to ``t`` known), the next
    ``horizon`` days' variances are forecast.
    """
    from arch import arch_model

    returns = series.x[:, 0].astype(np.float64)
    a, b = split.train
    p, q = GARCH_ORDER
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter; the test score says how it went
        fitted = arch_model(returns[a:b], mean="Constant", vol="GARCH", p=p, q=q).fit(disp="off")
        full = arch_model(returns, mean="Constant", vol="GARCH", p=p, q=q).fix(fitted.params)
        ahead = full.forecast(horizon=series.horizon, start=0, reindex=True)
    expected_square = ahead.mean.to_numpy() ** 2 + ahead.variance.to_numpy()  # [N, horizon]
    forecast = np.sqrt(expected_square.mean(axis=1))[:, None]  # [N, 1]
    params = {k: float(v) for k, v in fitted.params.items()}
    return Baseline("garch", garch_spec(), forecast, params)


def classical_model(series: Series) -> str:
    """``sarima``, ``garch`` or ``""``: the series' classical baseline, if it applies.

    SARIMA here forecasts one output one step ahead, so a longer horizon has none.
    """
    if series.classical == "sarima" and (series.horizon != 1 or series.n_outputs != 1):
        return ""
    return series.classical


def classical_spec(series: Series) -> str:
    """The name of the series' classical baseline, or ``""`` if it has none."""
    model = classical_model(series)
    if model == "sarima":
        return sarima_spec(series.season)
    if model == "garch":
        return garch_spec()
    return ""


def baselines(series: Series, split: Split, *, classical: bool = True) -> list[Baseline]:
    """Persistence, the seasonal naive (if the series has a season) and the classical model.

    ``classical=False`` leaves out the classical model (its fit takes tens of seconds).
    """
    found = [persistence(series)]
    if series.season >= 1:
        found.append(seasonal_naive(series, series.season))
    model = classical_model(series) if classical else ""
    if model == "sarima":
        found.append(sarima(series, split))
    elif model == "garch":
        found.append(garch(series, split))
    return found


def _errors(forecast: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    err = forecast - truth
    return float(np.sqrt(np.mean(err**2))), float(np.mean(np.abs(err)))


def compare(pred: Predictions, found: list[Baseline], season: int) -> dict[str, Any]:
    """The model against each baseline on the same points: the manifest's ``baselines``.

    Points are the model's scored points (see :func:`rnnstream.export.train.score`) where
    every baseline is defined. Per baseline: its RMSE and MAE and model / baseline ratios;
    ``strongest`` names the baseline with the lowest RMSE.
    """
    forecasts = [b.forecast[pred.rows] for b in found]  # each [N, O]
    ok = np.isfinite(pred.baseline).all(axis=1)
    for f in forecasts:
        ok &= np.isfinite(f).all(axis=1)
    truth = pred.truth[ok].astype(np.float64)
    rmse, mae = _errors(pred.model[ok].astype(np.float64), truth)
    out: dict[str, Any] = {
        "season": season,
        "classical": next((b.spec for b in found if b.params), ""),
        "points": int(ok.sum()),
        "model_rmse": float(f"{rmse:.6g}"),
        "model_mae": float(f"{mae:.6g}"),
    }
    best = ("", math.inf)
    for baseline, forecast in zip(found, forecasts, strict=True):
        b_rmse, b_mae = _errors(forecast[ok], truth)
        out[baseline.name] = {
            "spec": baseline.spec,
            "rmse": float(f"{b_rmse:.6g}"),
            "mae": float(f"{b_mae:.6g}"),
            "rmse_ratio": float(f"{rmse / b_rmse:.6g}") if b_rmse > 0 else math.inf,
            "mae_ratio": float(f"{mae / b_mae:.6g}") if b_mae > 0 else math.inf,
        }
        if b_rmse < best[1]:
            best = (baseline.name, b_rmse)
    out["strongest"] = best[0]
    return out


def names(compared: dict[str, Any]) -> list[str]:
    """The baseline names in a :func:`compare` result, in the order they were added."""
    return [k for k, v in compared.items() if isinstance(v, dict)]


def table(title: str, model_label: str, compared: dict[str, Any]) -> str:
    """A :func:`compare` result as text: one row per forecaster, RMSE, MAE, model / it."""
    rows = [(model_label, compared["model_rmse"], compared["model_mae"], "")]
    for name in names(compared):
        entry = compared[name]
        rows.append((entry["spec"], entry["rmse"], entry["mae"], f"{entry['rmse_ratio']:.3f}"))
    width = max(len(r[0]) for r in rows) + 2
    lines = [
        f"{title}, {compared['points']} one-step-ahead predictions",
        f"{'':<{width}}{'RMSE':>10}{'MAE':>10}{'model/it':>10}",
    ]
    lines += [
        f"{label:<{width}}{r:>10.4f}{m:>10.4f}{ratio:>10}".rstrip() for label, r, m, ratio in rows
    ]
    return "\n".join(lines)
