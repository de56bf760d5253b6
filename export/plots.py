"""PNG plots of a training run: losses, predictions, hidden state, gradients, clipping.

Besides loss curves and test predictions: the gradient through time with its memory
horizon, and the gradient norm before clipping with how often clipping rescaled it.

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
from rnnstream.export.gradients import VANISHED, GradientFlow
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


def plot_gradient_flow(flows: dict[str, GradientFlow], title: str, path: Path) -> Path:
    """``||dL_T / dh_(T-k)||`` against ``k`` on a log scale, one curve per model.

    Each curve's dotted line is ``VANISHED`` times its ``k = 0`` value and its dot the memory
    horizon; a dashed line marks ``--tbptt K``, where training's gradient stopped.
    """
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for (label, flow), color in zip(flows.items(), plt.rcParams["axes.prop_cycle"], strict=False):
        c = color["color"]
        k = np.arange(len(flow.norms))
        horizon = flow.memory_horizon()
        ax.plot(k, flow.norms, color=c, label=f"{label} (memory horizon: {horizon})")
        ax.axhline(VANISHED * flow.norms[0], color=c, linestyle=":", linewidth=0.8)
        if isinstance(horizon, int) and horizon < len(flow.norms):
            ax.plot([horizon], [flow.norms[horizon]], "o", color=c)
    truncated = next((f for f in flows.values() if f.limited_by() == "tbptt"), None)
    if truncated is not None:  # one training setting for every curve
        ax.axvline(truncated.reach, color="grey", linestyle="--", linewidth=1)
        ax.annotate(
            f"--tbptt {truncated.tbptt}: training's gradient stops here",
            (truncated.reach, float(truncated.norms[0])),
            xytext=(4, -12),
            textcoords="offset points",
            fontsize=8,
            color="grey",
        )
    ax.set_yscale("log")
    ax.set_xlabel("k (steps back from the last step)")
    ax.set_ylabel("||dL_T / dh_(T-k)||")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_clipping(history: History, clip: float, title: str, path: Path) -> Path:
    """Per epoch: the gradient norm before clipping (mean and max) and how often clip bit."""
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    epochs = np.arange(1, len(history.grad_norm) + 1)
    ax.plot(epochs, history.grad_norm, marker=".", label="mean norm before clipping")
    ax.plot(epochs, history.grad_norm_max, linestyle="--", label="max norm before clipping")
    if clip > 0:
        ax.axhline(clip, color="grey", linestyle=":", label=f"--clip {clip:g}")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("global gradient norm")
    ax.set_title(title)
    share = ax.twinx()
    share.bar(epochs, [100 * c for c in history.clipped], alpha=0.2, color="tab:red")
    share.set_ylim(0, 100)
    share.set_ylabel("steps rescaled by --clip (%)", color="tab:red")
    ax.legend(fontsize=8)
    fig.tight_layout()
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
    flow: GradientFlow,
    clip: float,
    out_dir: Path,
    prefix: str,
) -> list[Path]:
    """All the plots as ``out_dir/{prefix}-{loss,predictions,hidden,gradients,clipping}.png``."""
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
        plot_gradient_flow(
            {cell: flow},
            f"{prefix}: gradient through time, held-out windows",
            out_dir / f"{prefix}-gradients.png",
        ),
        plot_clipping(
            history,
            clip,
            f"{prefix}: gradient norm before clipping",
            out_dir / f"{prefix}-clipping.png",
        ),
    ]
