"""PNG plots of a training run: loss curves, test predictions, and the hidden state at work.

The hidden-state heatmap is the theory made visible: each row is one unit of the top
layer's ``h_t``, each column a time step of the test split, so you can watch the fixed-size
state summarise the stream (units that track the level, the daily cycle, the trend...).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from rnnstream.export.data import Series, Split
from rnnstream.export.model import SequenceModel
from rnnstream.export.train import History, Predictions

STRETCH = 240  # test steps shown in the prediction and hidden-state plots


def plot_losses(history: History, title: str, path: Path) -> Path:
    """Training and validation loss (normalised MSE) per epoch, best epoch marked."""
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    epochs = np.arange(1, len(history.train_loss) + 1)
    ax.plot(epochs, history.train_loss, label="train")
    ax.plot(epochs, history.val_loss, label="validation")
    ax.axvline(
        history.best_epoch, color="grey", linestyle=":", label=f"best epoch ({history.best_epoch})"
    )
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("MSE (output-std units)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def plot_predictions(
    pred: Predictions, series: Series, title: str, path: Path, stretch: int = STRETCH
) -> Path:
    """The first ``stretch`` test predictions against the truth and the baseline."""
    n = min(stretch, len(pred.truth))
    fig, ax = plt.subplots(figsize=(9, 4), dpi=100)
    steps = np.arange(n)
    ax.plot(steps, pred.truth[:n, 0], color="black", linewidth=1.5, label="truth")
    ax.plot(
        steps, pred.baseline[:n, 0], color="tab:orange", linewidth=1, label=series.baseline_name
    )
    ax.plot(steps, pred.model[:n, 0], color="tab:blue", linewidth=1, label="model")
    start = series.index[pred.rows[0]] if series.index else str(pred.rows[0])
    ax.set_xlabel(f"test step (from {start})")
    ax.set_ylabel(series.output_names[0])
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def plot_hidden(
    model: SequenceModel,
    series: Series,
    split: Split,
    title: str,
    path: Path,
    stretch: int = STRETCH,
) -> Path:
    """The input and the top layer's hidden units ``h_t`` over a stretch of the test split."""
    a, _ = split.test
    b = min(split.test[1], a + stretch)
    x = torch.from_numpy(series.x[a:b]).unsqueeze(0).to(model.x_mean.device)  # [1, T, F]
    with torch.no_grad():
        _, _, hidden = model.forward_normalized(x)  # [1, T, H]
    h = hidden.squeeze(0).cpu().numpy().T  # [H, T]
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(9, 6), dpi=100, sharex=True, gridspec_kw={"height_ratios": [1, 3]}
    )
    top.plot(series.x[a:b, 0], color="black", linewidth=1)
    top.set_ylabel(series.feature_names[0])
    top.set_title(title)
    image = bottom.imshow(h, aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    bottom.set_ylabel("hidden unit")
    bottom.set_xlabel("test step")
    fig.colorbar(image, ax=[top, bottom], label="h_t", shrink=0.8)
    return _save(fig, path)


def _save(fig: Figure, path: Path) -> Path:
    """Write the figure to ``path`` and free it."""
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_all(
    model: SequenceModel,
    series: Series,
    split: Split,
    history: History,
    test_pred: Predictions,
    out_dir: Path,
    prefix: str,
) -> list[Path]:
    """All three plots as ``out_dir/{prefix}-{loss,predictions,hidden}.png``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cell = model.config.cell.upper()
    return [
        plot_losses(history, f"{prefix}: {cell} training", out_dir / f"{prefix}-loss.png"),
        plot_predictions(
            test_pred,
            series,
            f"{prefix}: test split, model vs truth",
            out_dir / f"{prefix}-predictions.png",
        ),
        plot_hidden(
            model,
            series,
            split,
            f"{prefix}: {cell} hidden state on the test split",
            out_dir / f"{prefix}-hidden.png",
        ),
    ]
