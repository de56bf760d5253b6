"""Datasets: real series shipped inside installed packages, any CSV, and a synthetic one.

Every loader returns a :class:`Series`: per time step ``t`` the inputs ``x[t]`` (raw units),
the target ``y[t]`` the model must predict at step ``t`` and the naive ``baseline[t]`` it
must beat. Nothing here downloads anything: the files are read straight out of the
installed ``vega_datasets`` and ``pmdarima`` packages with :mod:`importlib.resources`.

Splits are by time (70/10/20 train/val/test, never shuffled across time) and the
normalisation statistics come from the training part only.
"""

from __future__ import annotations

import importlib.util
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

DATASETS: tuple[str, ...] = ("seattle-temp", "msft-vol", "synthetic")
SPLIT_FRACTIONS: tuple[float, float, float] = (0.7, 0.1, 0.2)

SEATTLE_ROWS = 8759
MSFT_ROWS = 7983
SYNTHETIC_ROWS = 3000


class DataError(ValueError):
    """A dataset that cannot be loaded or does not fit the request; the message says why."""


@dataclass
class Series:
    """One multivariate series, aligned so that row ``t`` is a training example.

    ``x[t]`` is what a client sends at step ``t``; ``y[t]`` is what the model should answer
    at that step; ``baseline[t]`` is the naive answer (persistence, historical volatility)
    computed from data up to ``t`` only.
    """

    name: str
    source: str
    x: np.ndarray  # [N, F] float32, raw units
    y: np.ndarray  # [N, O] float32, raw units
    baseline: np.ndarray  # [N, O] float32, NaN where the naive answer is undefined
    feature_names: list[str]
    output_names: list[str]
    baseline_name: str
    rows: int  # rows in the source file, before features and targets are derived
    horizon: int
    return_sequences: bool
    index: list[str] = field(default_factory=list)  # a timestamp per aligned row, if known
    feature_recipe: dict[str, str] = field(default_factory=dict)
    description: str = ""
    season: int = 0  # rows per season (24 for hourly readings); 0: no seasonal baseline
    target_feature: int | None = None  # the input column that holds the target's current value
    classical: str = ""  # the classical baseline of the field: "sarima", "garch" or none

    def __post_init__(self) -> None:
        n = len(self.x)
        if self.x.ndim != 2 or self.y.ndim != 2 or self.baseline.shape != self.y.shape:
            raise DataError(
                f"{self.name}: x must be [N, F] and y, baseline [N, O]; got "
                f"{self.x.shape}, {self.y.shape}, {self.baseline.shape}"
            )
        if len(self.y) != n or (self.index and len(self.index) != n):
            raise DataError(f"{self.name}: x, y and index must have the same number of rows")
        if len(self.feature_names) != self.x.shape[1]:
            raise DataError(
                f"{self.name}: {len(self.feature_names)} feature names for x {self.x.shape}"
            )
        if len(self.output_names) != self.y.shape[1]:
            raise DataError(
                f"{self.name}: {len(self.output_names)} output names for y {self.y.shape}"
            )

    @property
    def n_features(self) -> int:
        """Inputs per step (F)."""
        return int(self.x.shape[1])

    @property
    def n_outputs(self) -> int:
        """Outputs per step (O)."""
        return int(self.y.shape[1])

    def __len__(self) -> int:
        return len(self.x)


@dataclass(frozen=True)
class Split:
    """Contiguous row ranges ``[start, stop)`` of the train, validation and test parts."""

    train: tuple[int, int]
    val: tuple[int, int]
    test: tuple[int, int]

    def part(self, name: str) -> tuple[int, int]:
        """The ``(start, stop)`` of ``train``, ``val`` or ``test``."""
        return {"train": self.train, "val": self.val, "test": self.test}[name]

    def sizes(self) -> dict[str, int]:
        """Rows in each part."""
        return {k: b - a for k, (a, b) in self.as_dict().items()}

    def as_dict(self) -> dict[str, tuple[int, int]]:
        """``{"train": (start, stop), ...}``."""
        return {"train": self.train, "val": self.val, "test": self.test}


@dataclass(frozen=True)
class Stats:
    """Normalisation statistics, computed on the training part only."""

    x_mean: np.ndarray  # [F]
    x_std: np.ndarray  # [F]
    y_mean: np.ndarray  # [O]
    y_std: np.ndarray  # [O]

    def to_dict(self) -> dict[str, list[float]]:
        """JSON-ready lists."""
        return {
            k: [float(v) for v in getattr(self, k)] for k in ("x_mean", "x_std", "y_mean", "y_std")
        }


def time_split(n: int, fractions: Sequence[float] = SPLIT_FRACTIONS, gap: int = 0) -> Split:
    """Split ``n`` rows by time into train/val/test ranges (in that order, no overlap).

    ``gap`` rows are dropped at the end of train and of validation: a row's target lies
    ``horizon`` steps after its input, so with ``gap = horizon`` no training target falls
    in the validation period and no validation target in the test period.
    """
    if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-9 or min(fractions) <= 0:
        raise DataError(
            f"split fractions must be three positive numbers summing to 1, got {fractions}"
        )
    n_train = round(n * fractions[0])
    n_val = round(n * fractions[1])
    if gap < 0:
        raise DataError(f"the gap between parts must be 0 or more rows, got {gap}")
    if n_train - gap < 2 or n_val - gap < 2 or n - n_train - n_val < 2:
        raise DataError(f"{n} rows are too few to split {fractions} by time with a gap of {gap}")
    return Split(
        train=(0, n_train - gap),
        val=(n_train, n_train + n_val - gap),
        test=(n_train + n_val, n),
    )


def fit_stats(series: Series, split: Split, residual: int | None = None) -> Stats:
    """Mean and standard deviation of inputs and targets over the training part only.

    With ``residual = i`` the target statistics are those of the change ``y - x[:, i]``,
    which is what a residual model's head predicts.
    """
    a, b = split.train
    x, y = series.x[a:b], series.y[a:b]
    if residual is not None:
        y = y - x[:, residual : residual + 1]

    def std(values: np.ndarray) -> np.ndarray:
        s = values.std(axis=0)
        return np.where(s > 1e-8, s, 1.0).astype(np.float32)  # a constant column stays as is

    return Stats(
        x_mean=x.mean(axis=0).astype(np.float32),
        x_std=std(x),
        y_mean=y.mean(axis=0).astype(np.float32),
        y_std=std(y),
    )


def sequence_windows(
    x: np.ndarray, y: np.ndarray, window: int, stride: int
) -> tuple[np.ndarray, np.ndarray]:
    """Cut one contiguous segment into windows: ``[N, W, F]`` inputs and ``[N, W, O]`` targets."""
    if len(x) < window:
        raise DataError(f"a segment of {len(x)} rows is shorter than the window ({window})")
    starts = np.arange(0, len(x) - window + 1, stride)
    idx = starts[:, None] + np.arange(window)[None, :]  # [N, W] row numbers
    return x[idx], y[idx]  # [N, W, F], [N, W, O]


def package_file(package: str, *parts: str) -> Path:
    """A data file shipped inside an installed package, found without importing it.

    ``importlib.resources.files(package)`` would import the package first, and importing
    pmdarima pulls in scikit-learn and statsmodels (seconds); ``find_spec`` only locates it.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"package {package!r} is not installed: pip install 'rnnstream[train]'")
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    if not path.is_file():
        raise DataError(f"{path} is missing from the installed {package} package")
    return path


def load_hourly_temperature(file: str, name: str, city: str, horizon: int = 1) -> Series:
    """An hourly temperature series, 2010, deg F, from ``vega_datasets``' ``_data/FILE``.

    One feature (the reading), one output (the reading ``horizon`` hours later); the
    baseline is persistence (the current reading); the season is a day (24 readings).
    """
    frame = pd.read_csv(package_file("vega_datasets", "_data", file))
    temp = frame["temp"].to_numpy(dtype=np.float32)
    n = len(temp) - horizon
    return Series(
        name=name,
        source=f"vega_datasets package file _data/{file} (hourly, 2010)",
        x=temp[:n, None],
        y=temp[horizon:, None],
        baseline=temp[:n, None].copy(),
        feature_names=["temp_f"],
        output_names=[f"temp_f_next_{horizon}h" if horizon > 1 else "temp_f_next_hour"],
        baseline_name="persistence",
        rows=len(frame),
        horizon=horizon,
        return_sequences=True,
        index=[str(d) for d in frame["date"].iloc[:n]],
        feature_recipe={"temp_f": "the hourly temperature reading in degrees Fahrenheit"},
        description=(
            f"Hourly temperature in {city} (deg F): send one reading per hour, get the "
            f"forecast for {horizon} hour(s) later at every step."
        ),
        season=24,
        target_feature=0,
        classical="sarima",
    )


def load_seattle_temp(horizon: int = 1) -> Series:
    """Hourly Seattle temperature, 2010 (8,759 readings, deg F) from ``vega_datasets``."""
    return load_hourly_temperature("seattle-temps.csv", "seattle-temp", "Seattle", horizon)


def load_sf_temp(horizon: int = 1) -> Series:
    """Hourly San Francisco temperature, 2010 (8,760 readings, deg F) from ``vega_datasets``.

    Never trained on: the series the Seattle model is checked against as unseen data.
    """
    return load_hourly_temperature("sf-temps.csv", "sf-temp", "San Francisco", horizon)


def read_msft_prices() -> pd.DataFrame:
    """Daily MSFT OHLCV, 1986-03-13 to 2017-11-10 (7,983 rows), from ``pmdarima``'s tarball."""
    path = package_file("pmdarima", "datasets", "data", "msft.tar.gz")
    with tarfile.open(path, mode="r:gz") as archive:
        member = archive.extractfile("msft.csv")
        if member is None:
            raise DataError("pmdarima's msft.tar.gz has no msft.csv")
        return pd.read_csv(member)


def load_msft_vol(window: int = 20, horizon: int = 5) -> Series:
    """Next-``horizon``-day realised volatility of MSFT from daily log return and range.

    Features per trading day ``t`` (percent): ``ret = 100*ln(close_t/close_{t-1})`` and
    ``range = 100*ln(high_t/low_t)``. Target: ``sqrt(mean(ret_{t+1..t+horizon}^2))``.
    Baseline: historical volatility over the model's input window,
    ``sqrt(mean(ret_{t-window+1..t}^2))``.
    """
    prices = read_msft_prices()
    close = prices["Close"].to_numpy(dtype=np.float64)
    ret = 100.0 * np.log(close[1:] / close[:-1])  # [N-1], ret[i] is day i+1
    rng = 100.0 * np.log(prices["High"].to_numpy()[1:] / prices["Low"].to_numpy()[1:])
    dates = prices["Date"].astype(str).to_numpy()[1:]
    sq = ret**2
    csum = np.concatenate([[0.0], np.cumsum(sq)])  # csum[k] = sum of sq[:k]
    n = len(ret) - horizon
    t = np.arange(n)
    target = np.sqrt((csum[t + 1 + horizon] - csum[t + 1]) / horizon)
    baseline = np.full(n, np.nan)
    ok = t >= window - 1
    baseline[ok] = np.sqrt((csum[t[ok] + 1] - csum[t[ok] + 1 - window]) / window)
    return Series(
        name="msft-vol",
        source="pmdarima package file datasets/data/msft.tar.gz (MSFT daily OHLCV)",
        x=np.stack([ret[:n], rng[:n]], axis=1).astype(np.float32),  # [N, 2]
        y=target[:, None].astype(np.float32),  # [N, 1]
        baseline=baseline[:, None].astype(np.float32),  # [N, 1]
        feature_names=["log_return_pct", "log_range_pct"],
        output_names=[f"realized_vol_next_{horizon}d_pct"],
        baseline_name=f"historical volatility over the {window}-day window",
        rows=len(prices),
        horizon=horizon,
        return_sequences=False,
        index=list(dates[:n]),
        feature_recipe={
            "log_return_pct": (
                "100 * ln(close_t / close_{t-1}), close = the daily (split-adjusted) close"
            ),
            "log_range_pct": "100 * ln(high_t / low_t), the day's high and low",
        },
        description=(
            f"MSFT daily realised volatility: send the last {window} trading days "
            f"(oldest first) of [log_return_pct, log_range_pct], get "
            f"sqrt(mean of the next {horizon} squared daily log returns) in percent."
        ),
        season=5,  # a trading week; the seasonal naive repeats the last week's volatility
        classical="garch",
    )


def load_synthetic(rows: int = SYNTHETIC_ROWS, horizon: int = 1, seed: int = 0) -> Series:
    """Seeded noisy sines: two features, forecast the first one ``horizon`` steps ahead.

    ``a_t = sin(2 pi t/24) + 0.4 sin(2 pi t/7) + noise`` and ``b_t = cos(2 pi t/24) + noise``
    with Gaussian noise of standard deviation 0.05. Baseline: persistence of ``a``.
    """
    gen = np.random.default_rng(seed)
    t = np.arange(rows + horizon, dtype=np.float64)
    a = np.sin(2 * np.pi * t / 24) + 0.4 * np.sin(2 * np.pi * t / 7)
    a += 0.05 * gen.standard_normal(len(t))
    b = np.cos(2 * np.pi * t / 24) + 0.05 * gen.standard_normal(len(t))
    x = np.stack([a, b], axis=1)[:rows].astype(np.float32)  # [N, 2]
    return Series(
        name="synthetic",
        source=f"seeded noisy sines (seed {seed}, {rows} rows)",
        x=x,
        y=a[horizon : rows + horizon, None].astype(np.float32),
        baseline=x[:, :1].copy(),
        feature_names=["a", "b"],
        output_names=[f"a_next_{horizon}"],
        baseline_name="persistence",
        rows=rows,
        horizon=horizon,
        return_sequences=True,
        feature_recipe={
            "a": "sin(2 pi t/24) + 0.4 sin(2 pi t/7) + noise",
            "b": "cos(2 pi t/24) + noise",
        },
        description=f"Synthetic noisy sines: forecast a, {horizon} step(s) ahead.",
        season=24,
        target_feature=0,
        classical="sarima",
    )


def load_csv(
    path: Path, features: Sequence[str] | None, targets: Sequence[str] | None, horizon: int = 1
) -> Series:
    """Any CSV with one row per time step: forecast ``targets`` ``horizon`` rows ahead.

    ``features`` default to the targets. A first non-numeric column is taken as the time
    stamp. Rows with a missing value in a used column are dropped. Baseline: persistence.
    """
    try:
        frame = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    numeric = [c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c])]
    if not targets:
        if len(numeric) != 1:
            raise DataError(
                f"{path} has numeric columns {numeric}: say which to forecast with --targets"
            )
        targets = numeric
    features = list(features) if features else list(targets)
    for column in [*features, *targets]:
        if column not in frame.columns:
            raise DataError(f"{path} has no column {column!r}; columns: {list(frame.columns)}")
        if column not in numeric:
            raise DataError(f"column {column!r} of {path} is not numeric")
    stamp = frame.columns[0] if frame.columns[0] not in numeric else None
    used = list(dict.fromkeys([*features, *targets]))
    frame = frame.dropna(subset=used).reset_index(drop=True)
    # copy=True: a one-column frame would hand back a read-only view, which torch warns about.
    x_all = frame[features].to_numpy(dtype=np.float32, copy=True)
    y_all = frame[list(targets)].to_numpy(dtype=np.float32, copy=True)
    n = len(frame) - horizon
    if n < 20:
        raise DataError(f"{path} has {len(frame)} usable rows; too few to train on")
    return Series(
        name=path.stem,
        source=f"CSV file {path.name}",
        x=x_all[:n],
        y=y_all[horizon:],
        baseline=y_all[:n].copy(),
        feature_names=list(features),
        output_names=[f"{c}_next_{horizon}" for c in targets],
        baseline_name="persistence",
        rows=len(frame),
        horizon=horizon,
        return_sequences=True,
        index=[str(v) for v in frame[stamp].iloc[:n]] if stamp is not None else [],
        feature_recipe={c: f"column {c!r} of the CSV" for c in features},
        description=(
            f"Forecast {', '.join(targets)} {horizon} row(s) ahead from {', '.join(features)}."
        ),
        season=_season(frame[stamp]) if stamp is not None else 0,
        target_feature=(
            features.index(targets[0]) if len(targets) == 1 and targets[0] in features else None
        ),
        classical="sarima" if len(targets) == 1 else "",
    )


def _season(stamps: pd.Series) -> int:
    """Rows per day for hourly time stamps (24), per week for daily ones (7), else 0."""
    times = pd.to_datetime(stamps, errors="coerce")
    steps = times.diff().dropna()
    if times.isna().any() or steps.empty:
        return 0
    step = steps.median()
    if step == pd.Timedelta(hours=1):
        return 24
    if step == pd.Timedelta(days=1):
        return 7
    return 0


@dataclass(frozen=True)
class DatasetDefaults:
    """Sensible defaults per dataset, used where the command line leaves a flag out."""

    window: int
    horizon: int


DEFAULTS: dict[str, DatasetDefaults] = {
    "seattle-temp": DatasetDefaults(window=168, horizon=1),
    "msft-vol": DatasetDefaults(window=20, horizon=5),
    "synthetic": DatasetDefaults(window=48, horizon=1),
}
CSV_DEFAULTS = DatasetDefaults(window=64, horizon=1)


def defaults_for(data: str) -> DatasetDefaults:
    """The defaults of a named dataset (or of any CSV)."""
    return DEFAULTS.get(data, CSV_DEFAULTS)


def load(
    data: str,
    *,
    window: int,
    horizon: int,
    features: Sequence[str] | None = None,
    targets: Sequence[str] | None = None,
    seed: int = 0,
) -> Series:
    """Load a named dataset (``seattle-temp``, ``msft-vol``, ``synthetic``) or a CSV path."""
    if data in DATASETS:
        if features or targets:
            raise DataError(f"--features/--targets apply to a CSV file, not to dataset {data!r}")
        if data == "seattle-temp":
            return load_seattle_temp(horizon=horizon)
        if data == "msft-vol":
            return load_msft_vol(window=window, horizon=horizon)
        return load_synthetic(horizon=horizon, seed=seed)
    path = Path(data)
    if path.suffix.lower() != ".csv" or not path.is_file():
        raise DataError(
            f"--data {data!r} is neither a dataset ({', '.join(DATASETS)}) "
            "nor an existing .csv file"
        )
    return load_csv(path, features, targets, horizon=horizon)


# A series of the same kind that a dataset's model never trains on, to check it generalises.
UNSEEN: dict[str, Callable[[int], Series]] = {"seattle-temp": load_sf_temp}


def unseen_for(data: str, horizon: int) -> Series | None:
    """The never-trained-on series for ``data`` (sf-temp for seattle-temp), or None."""
    loader = UNSEEN.get(data)
    return loader(horizon) if loader is not None else None


def describe(series: Series, split: Split) -> dict[str, Any]:
    """What the manifest records about the data: name, source, rows, split and dates."""
    info: dict[str, Any] = {
        "name": series.name,
        "source": series.source,
        "rows": series.rows,
        "examples": len(series),
        "horizon": series.horizon,
        "split": {
            k: {"start": a, "stop": b, "rows": b - a} for k, (a, b) in split.as_dict().items()
        },
        "split_fractions": list(SPLIT_FRACTIONS),
        "baseline": series.baseline_name,
    }
    if series.index:
        info["date_range"] = [series.index[0], series.index[-1]]
        for part, (a, b) in split.as_dict().items():
            info["split"][part]["date_range"] = [series.index[a], series.index[b - 1]]
    return info
