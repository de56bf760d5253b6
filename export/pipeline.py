"""One training run: data -> train -> readout -> score, baselines -> gradients -> export, plots.

A many-to-many model is scored the way its baselines forecast: streamed from the series'
first row, errors counted on the part's rows (``metrics.streamed_from_row``), so at the
first test row it knows the history that persistence, the seasonal naive and the seasonal
ARIMA use. The test part streamed from a fresh zero state is scored too
(``metrics.cold_start``): what a session that sends no history first gets.

On request (``compare_cells``) the same network is also trained with the other two cells,
for the gradient-through-time comparison plot; only the requested cell is exported.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from rnnstream.export import baselines
from rnnstream.export import data as datasets
from rnnstream.export.gradients import GradientFlow, gradient_flow
from rnnstream.export.model import CELL_TYPES, ModelConfig, SequenceModel
from rnnstream.export.onnx import ARTIFACT_FILES, Parity, write_artifact
from rnnstream.export.quality import baseline_warnings, strongest_baseline_warnings
from rnnstream.export.readout import ReadoutFit, solve_readout
from rnnstream.export.train import History, Predictions, TrainConfig, predict, score, train
from rnnstream.manifest import Manifest

VERIFY_REAL_STEPS = 200


@dataclass
class RunSpec:
    """What to train and where to put it (the parsed command line)."""

    data: str
    cell: str
    hidden_size: int
    layers: int
    out: Path
    train: TrainConfig
    horizon: int
    features: list[str] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)
    name: str = ""
    version: str = "1"
    plots: Path | None = None
    quiet: bool = False
    command: str = ""
    compare_cells: bool = False  # also train the other cells, for the gradient comparison
    residual: bool = False  # predict the change from the target's current reading
    taps: int = 0  # K: the last K inputs kept exactly in the state (a delay line)
    classical_baseline: bool = True  # also fit SARIMA / GARCH(1,1) as a baseline (slow)
    solve_readout: bool = False  # after training, solve the linear head in closed form


@dataclass
class RunReport:
    """What a run produced."""

    manifest: Manifest
    model: SequenceModel
    test: dict[str, float]
    parity: Parity
    plots: list[Path]
    seconds: float
    flows: dict[str, GradientFlow] = field(default_factory=dict)  # by cell; the model's first
    readout: ReadoutFit | None = None  # what --solve-readout did


def _rounded(values: dict[str, float]) -> dict[str, float]:
    return {k: (v if isinstance(v, int) else float(f"{v:.6g}")) for k, v in values.items()}


def _layout(config: ModelConfig) -> str:
    """The manifest's sentence on what each slot of a state row holds."""
    blocks = [f"h[layer {i}]" for i in range(config.layers)]
    if config.cell == "lstm":
        blocks += [f"c[layer {i}]" for i in range(config.layers)]
    hidden = config.hidden_size
    text = f"State row layout (S={config.state_size}): " + ", ".join(blocks) + f", each {hidden} "
    if not config.taps:
        return text + "wide; initial state zeros."
    k, f, start = config.taps, config.n_features, config.cell_state_size
    return (
        text + f"wide; then slots {start}..{config.state_size - 1}: the taps, a delay line of the "
        f"last {k} inputs (normalised, (x - mean) / std of the training part), oldest first, "
        f"{f} wide each, the newest being the current step's input; initial state zeros."
    )


def _verify_inputs(series: datasets.Series, split: datasets.Split, window: int) -> np.ndarray:
    """A real stretch of the test split for the export check: ``[B, T, F]``."""
    a, b = split.test
    if series.return_sequences:
        return series.x[a : min(b, a + VERIFY_REAL_STEPS)][None]  # [1, T, F]
    xw, _ = datasets.sequence_windows(series.x[a:b], series.y[a:b], window, window)
    return xw[:8]  # [<=8, W, F]


def metrics_table(name: str, cell: str, baseline: str, test: dict[str, float]) -> str:
    """The test metrics of the model against its baseline, as a small text table."""
    rows = [
        (f"model ({cell.upper()})", test["rmse"], test["mae"]),
        (baseline, test["baseline_rmse"], test["baseline_mae"]),
        ("model / baseline", test["rmse_ratio"], test["mae_ratio"]),
    ]
    width = max(len(r[0]) for r in rows) + 2
    lines = [
        f"{name}: test split, {test['points']} predictions",
        f"{'':<{width}}{'RMSE':>10}{'MAE':>10}",
    ]
    lines += [f"{label:<{width}}{rmse:>10.4f}{mae:>10.4f}" for label, rmse, mae in rows]
    return "\n".join(lines)


def readout_line(fit: ReadoutFit) -> str:
    """One line on what ``--solve-readout`` did."""
    verdict = "kept" if fit.applied else "not better: the trained head kept"
    return (
        f"readout solved in closed form (ridge {fit.penalty:g} per row, {fit.rows} rows x "
        f"{fit.columns} columns): validation MSE {fit.val_mse_trained:.4g} -> "
        f"{fit.val_mse_solved:.4g}, {verdict}"
    )


def epoch_table(history: History, clip: float) -> str:
    """Per epoch: losses, the gradient norm before clipping and how often ``clip`` rescaled it."""
    lines = ["epoch  train loss  val loss  grad norm before clipping: mean     max  clipped"]
    for i in range(len(history.train_loss)):
        best = "  (best)" if i + 1 == history.best_epoch else ""
        clipped = f"{history.clipped[i]:>7.0%}" if clip > 0 else "    off"
        lines.append(
            f"{i + 1:>5}  {history.train_loss[i]:>10.4f}  {history.val_loss[i]:>8.4f}  "
            f"{history.grad_norm[i]:>31.3g}  {history.grad_norm_max[i]:>6.3g}  {clipped}{best}"
        )
    return "\n".join(lines)


def _unseen(model: SequenceModel, spec: RunSpec, window: int) -> dict[str, Any]:
    """The model on the test split of a series of its kind that it never saw.

    Scored against that series' own baselines (the classical one fitted on that series'
    training part); ``{}`` if the dataset has no such series.
    """
    unseen = datasets.unseen_for(spec.data, spec.horizon)
    if unseen is None:
        return {}
    split = datasets.time_split(len(unseen), gap=unseen.horizon)
    pred = predict(model, unseen, split.test, window, from_start=True)
    found = baselines.baselines(unseen, split, classical=spec.classical_baseline)
    return {
        "data": unseen.name,
        "source": unseen.source,
        "split": "test",
        "rows": {"start": split.test[0], "stop": split.test[1]},
        **_rounded(score(pred)),
        **_cold_start(model, unseen, split, window),
        "baselines": baselines.compare(pred, found, unseen.season),
    }


def _cold_start(
    model: SequenceModel, series: datasets.Series, split: datasets.Split, window: int
) -> dict[str, Any]:
    """Many-to-many: where scoring streamed from, and the test part from a fresh zero state."""
    if not series.return_sequences:
        return {}
    cold = score(predict(model, series, split.test, window))
    return {"streamed_from_row": 0, "cold_start": _rounded(cold)}


def run(spec: RunSpec, log: TextIO) -> RunReport:
    """Train, score, export (verified) and plot; returns what was written."""
    started = time.perf_counter()
    series = datasets.load(
        spec.data,
        window=spec.train.window,
        horizon=spec.horizon,
        features=spec.features or None,
        targets=spec.targets or None,
        seed=spec.train.seed,
    )
    split = datasets.time_split(len(series), gap=series.horizon)  # no target crosses a part
    if (spec.residual or spec.train.level_shift) and series.target_feature is None:
        raise ValueError(
            f"--residual and --level-shift need the target among the inputs; {series.name} "
            f"has none of {series.output_names} in {series.feature_names}"
        )
    config = ModelConfig(
        cell=spec.cell,
        n_features=series.n_features,
        n_outputs=series.n_outputs,
        hidden_size=spec.hidden_size,
        layers=spec.layers,
        residual=series.target_feature if spec.residual else None,
        taps=spec.taps,
    )
    result = train(series, split, config, spec.train, quiet=spec.quiet)
    model = result.model.cpu()
    window, tbptt = spec.train.window, spec.train.tbptt
    readout = (
        solve_readout(model, series, split, window, spec.train.level_shift)
        if spec.solve_readout
        else None
    )
    test_pred: Predictions = predict(model, series, split.test, window, from_start=True)
    val_pred = predict(model, series, split.val, window, from_start=True)
    test = score(test_pred)
    name = spec.name or series.name
    flows = {config.cell: gradient_flow(model, series, split, window, tbptt)}
    if spec.compare_cells:
        for cell in CELL_TYPES:
            if cell not in flows:
                other = train(
                    series, split, replace(config, cell=cell), spec.train, quiet=spec.quiet
                )
                flows[cell] = gradient_flow(other.model.cpu(), series, split, window, tbptt)
    flow = flows[config.cell]
    compared = baselines.compare(
        test_pred,
        baselines.baselines(series, split, classical=spec.classical_baseline),
        series.season,
    )
    unseen = _unseen(model, spec, window)
    metrics: dict[str, Any] = {
        "split": "test",
        "baseline": series.baseline_name,
        **_rounded(test),
        **_cold_start(model, series, split, window),
        "val": _rounded(score(val_pred)),
        "baselines": compared,
        **({"unseen": unseen} if unseen else {}),
        "memory_horizon": flow.memory_horizon(),
        "gradient_flow": flow.to_dict(),
    }
    manifest = Manifest(
        name=name,
        version=spec.version,
        cell=config.cell,
        layers=config.layers,
        hidden_size=config.hidden_size,
        n_features=config.n_features,
        n_outputs=config.n_outputs,
        state_size=config.state_size,
        taps=config.taps,
        feature_names=list(series.feature_names),
        output_names=list(series.output_names),
        task="forecast",
        return_sequences=series.return_sequences,
        description=(f"{series.description} {_layout(config)}"),
        feature_recipe=dict(series.feature_recipe),
        data=datasets.describe(series, split),
        metrics=metrics,
        warnings=[
            *baseline_warnings(test, series.baseline_name, result.history),
            *strongest_baseline_warnings(compared),
        ],
        config={
            "model": config.to_dict(),
            "train": spec.train.to_dict(),
            "window": spec.train.window,
            "normalization": result.stats.to_dict(),
            "history": result.history.to_dict(),
            **({"readout": readout.to_dict()} if readout else {}),
            "parameters": model.n_parameters(),
        },
        command=spec.command,
    )
    manifest, parity = write_artifact(
        model, manifest, spec.out, verify_inputs=_verify_inputs(series, split, spec.train.window)
    )
    plots = []
    if spec.plots is not None:
        from rnnstream.export.plots import plot_all

        plots = plot_all(
            model,
            series,
            split,
            result.history,
            test_pred,
            flow,
            spec.train.clip,
            spec.plots,
            name,
        )
        if spec.compare_cells:
            from rnnstream.export.plots import plot_gradient_flow

            plots.append(
                plot_gradient_flow(
                    {cell.upper(): f for cell, f in flows.items()},
                    f"{name}: gradient through time, RNN vs GRU vs LSTM (H={config.hidden_size})",
                    spec.plots / f"{name}-cells.png",
                )
            )
    seconds = time.perf_counter() - started
    if not spec.quiet:
        print(epoch_table(result.history, spec.train.clip), file=log)
        if readout is not None:
            print(readout_line(readout), file=log)
        print(metrics_table(name, config.cell, series.baseline_name, test), file=log)
        if "cold_start" in metrics:
            cold = metrics["cold_start"]["rmse"]
            print(
                f"(streamed from the series' start; from a fresh session: RMSE {cold:.4f})",
                file=log,
            )
        model_label = f"model ({config.cell.upper()})"
        print(baselines.table(f"{name}: test split", model_label, compared), file=log)
        if unseen:
            title = f"{unseen['data']} (never trained on): its test split"
            print(baselines.table(title, model_label, unseen["baselines"]), file=log)
        for cell, f in flows.items():
            print(f"{cell.upper()}: {f.describe()}", file=log)
        for file_name in ARTIFACT_FILES:
            print(f"wrote {spec.out / file_name}", file=log)
        print(
            f"parity max |diff| {parity.worst:.2g} (onnxruntime vs torch); {seconds:.1f}s", file=log
        )
        for path in plots:
            print(f"plot {path}", file=log)
    return RunReport(
        manifest=manifest,
        model=model,
        test=test,
        parity=parity,
        plots=plots,
        seconds=seconds,
        flows=flows,
        readout=readout,
    )
