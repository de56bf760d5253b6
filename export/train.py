"""Backpropagation through time on windows of the training split.

An epoch shuffles the training windows (whole windows; time order inside a window is
kept) and, for each batch ``[B, W, F]``, runs the network from the zero state:

- full BPTT (``tbptt=0``): one forward pass over all ``W`` steps, one backward pass
  through all of them;
- truncated BPTT (``tbptt=K``): the window is cut into chunks of ``K`` steps; after each
  chunk's backward pass and optimiser step the state is *detached* and carried into the
  next chunk, so the network still sees the whole window but gradients flow back at most
  ``K`` steps (cheaper, and no exploding products of ``W`` Jacobians). For a many-to-one
  task the chunks before the last one only warm the state up.

Each epoch is scored on the validation part streamed from the zero state at its start, as
the training windows start. Gradients are clipped to a global norm (``clip``); the history
records, per epoch, that norm *before* clipping (mean and max over the optimiser steps)
and the fraction of steps ``clip`` rescaled, whether or not clipping is on. The best
validation epoch is kept and training stops after ``patience`` epochs without improvement.
Runs are reproducible: same seed, same data, same flags -> bitwise the same weights on
CPU.
"""

from __future__ import annotations

import copy
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from rnnstream.export.data import Series, Split, Stats, fit_stats, sequence_windows
from rnnstream.export.model import ModelConfig, SequenceModel

LR_SCHEDULES = ("constant", "cosine")


@dataclass
class TrainConfig:
    """The training run's knobs; saved in the manifest's ``config``."""

    epochs: int = 20
    lr: float = 3e-3
    batch_size: int = 32
    window: int = 64  # W: steps per training window
    stride: int = 0  # rows between window starts; 0: W // 4 (many-to-many) or 1 (many-to-one)
    tbptt: int = 0  # K: truncate BPTT every K steps; 0: full BPTT over the window
    clip: float = 1.0  # max global gradient norm; 0: no clipping
    patience: int = 5  # epochs without validation improvement before stopping; 0: never stop
    schedule: str = "constant"  # learning rate over the epochs: constant | cosine (lr -> 0)
    level_shift: float = 0.0  # std of a random offset added to each window's level; 0: none
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        checks = {
            "epochs": self.epochs >= 1,
            "lr": self.lr > 0,
            "batch_size": self.batch_size >= 1,
            "window": self.window >= 2,
            "stride": self.stride >= 0,
            "tbptt": self.tbptt >= 0,
            "clip": self.clip >= 0,
            "patience": self.patience >= 0,
            "schedule": self.schedule in LR_SCHEDULES,
            "level_shift": self.level_shift >= 0,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(
                f"invalid training settings: {', '.join(f'{k}={getattr(self, k)}' for k in bad)}"
            )

    def effective_stride(self, many_to_one: bool) -> int:
        """The stride actually used."""
        if self.stride:
            return self.stride
        return 1 if many_to_one else max(1, self.window // 4)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return asdict(self)


@dataclass
class History:
    """Per-epoch losses (normalised MSE) and where the best validation epoch was."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int = 0  # 1-based
    stopped_early: bool = False
    grad_norm: list[float] = field(default_factory=list)  # mean global norm before clipping
    grad_norm_max: list[float] = field(default_factory=list)  # its largest value in the epoch
    clipped: list[float] = field(default_factory=list)  # fraction of steps --clip rescaled

    def record_gradients(self, norms: list[float], clip: float) -> None:
        """Add one epoch's pre-clipping gradient norms (one per optimiser step)."""
        self.grad_norm.append(float(np.mean(norms)))
        self.grad_norm_max.append(float(np.max(norms)))
        self.clipped.append(float(np.mean([n > clip for n in norms])) if clip > 0 else 0.0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (losses rounded for the manifest)."""
        return {
            "train_loss": [round(v, 6) for v in self.train_loss],
            "val_loss": [round(v, 6) for v in self.val_loss],
            "best_epoch": self.best_epoch,
            "epochs_run": len(self.train_loss),
            "stopped_early": self.stopped_early,
            "grad_norm": [float(f"{v:.4g}") for v in self.grad_norm],
            "grad_norm_max": [float(f"{v:.4g}") for v in self.grad_norm_max],
            "clipped": [round(v, 4) for v in self.clipped],
        }


@contextmanager
def deterministic(seed: int) -> Iterator[np.random.Generator]:
    """Seed torch and numpy, force deterministic kernels and one thread; restore afterwards."""
    previous_flag = torch.are_deterministic_algorithms_enabled()
    previous_threads = torch.get_num_threads()
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)  # float sums in a fixed order on CPU
    try:
        yield np.random.default_rng(seed)
    finally:
        torch.use_deterministic_algorithms(previous_flag)
        torch.set_num_threads(previous_threads)


@dataclass
class Predictions:
    """Model, truth and baseline on one split part, aligned, raw units, ``[N, O]``."""

    model: np.ndarray
    truth: np.ndarray
    baseline: np.ndarray
    rows: np.ndarray  # [N] the series row of each prediction


def predict(
    model: SequenceModel,
    series: Series,
    part: tuple[int, int],
    window: int,
    *,
    from_start: bool = False,
) -> Predictions:
    """Predictions on one contiguous part, the way a client would stream it.

    Many-to-many: one sequence from the zero state, ``y`` at every step of the part; the
    sequence starts at the part's first row, or with ``from_start`` at the series' first row
    (the state then carries what came before, as a session streaming the series would, and
    as the baselines' forecasts use it). Many-to-one: every window of ``window`` steps that
    fits in the part (stride 1), ``y`` at its end; ``from_start`` changes nothing.
    """
    a, b = part
    device = model.x_mean.device
    model.eval()
    with torch.no_grad():
        if series.return_sequences:
            first = 0 if from_start else a
            x = torch.from_numpy(series.x[first:b]).unsqueeze(0).to(device)  # [1, T, F]
            y, _ = model(x)  # [1, T, O]
            rows = np.arange(a, b)
            out = y.squeeze(0)[a - first :].cpu().numpy()  # [N, O]
        else:
            xw, _ = sequence_windows(series.x[a:b], series.y[a:b], window, 1)  # [N, W, F]
            y, _ = model(torch.from_numpy(xw).to(device))  # [N, W, O]
            rows = np.arange(a + window - 1, b)
            out = y[:, -1].cpu().numpy()  # [N, O]
    return Predictions(model=out, truth=series.y[rows], baseline=series.baseline[rows], rows=rows)


def score(pred: Predictions) -> dict[str, float]:
    """RMSE and MAE of the model and the baseline on the same points, and their ratios."""
    ok = np.isfinite(pred.baseline).all(axis=1)
    err_model = pred.model[ok] - pred.truth[ok]
    err_base = pred.baseline[ok] - pred.truth[ok]
    rmse = float(np.sqrt(np.mean(err_model**2)))
    mae = float(np.mean(np.abs(err_model)))
    base_rmse = float(np.sqrt(np.mean(err_base**2)))
    base_mae = float(np.mean(np.abs(err_base)))
    return {
        "rmse": rmse,
        "mae": mae,
        "baseline_rmse": base_rmse,
        "baseline_mae": base_mae,
        "rmse_ratio": rmse / base_rmse if base_rmse > 0 else math.inf,
        "mae_ratio": mae / base_mae if base_mae > 0 else math.inf,
        "points": int(ok.sum()),
    }


def normalized_mse(model: SequenceModel, pred: Predictions) -> float:
    """MSE in output-std units (what the loss optimises)."""
    std = model.y_std.cpu().numpy()
    return float(np.mean(((pred.model - pred.truth) / std) ** 2))


@dataclass
class TrainResult:
    """The trained model (best validation epoch), its statistics and history."""

    model: SequenceModel
    stats: Stats
    history: History


def _batches(
    x: Tensor, y: Tensor, size: int, gen: np.random.Generator
) -> Iterator[tuple[Tensor, Tensor]]:
    order = torch.from_numpy(gen.permutation(len(x)))
    for i in range(0, len(x), size):
        idx = order[i : i + size]
        yield x[idx], y[idx]


def _shifted(
    batches: Iterator[tuple[Tensor, Tensor]],
    column: int | None,
    std: float,
    gen: np.random.Generator,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Shift each window's level: one random offset to the target and to input ``column``.

    The offset is normal with ``std`` raw units, one per window; ``column`` holds the
    target's current value, so the window shows the same dynamics at another level. That
    teaches a forecast that does not hang on the absolute level, which another place or
    season does not share. ``std = 0`` passes the batches through untouched.
    """
    if std <= 0:
        yield from batches
        return
    if column is None:
        raise ValueError("--level-shift needs the target among the inputs")
    for xb, yb in batches:
        offset = torch.from_numpy(gen.normal(0.0, std, (len(xb), 1, 1)).astype(np.float32))
        offset = offset.to(xb.device)  # [B, 1, 1]
        xb = xb.clone()
        xb[..., column : column + 1] += offset
        yield xb, yb + offset


def _train_batch(
    model: SequenceModel,
    optimizer: torch.optim.Optimizer,
    xb: Tensor,
    yb: Tensor,
    cfg: TrainConfig,
    many_to_one: bool,
    grad_norms: list[float],
) -> float:
    """One batch ``xb [B, W, F]``, ``yb [B, W, O]``: (truncated) BPTT; returns mean loss.

    Appends the global gradient norm before clipping of every optimiser step to ``grad_norms``.
    """
    window = xb.shape[1]
    chunk = cfg.tbptt or window
    state: Tensor | None = None
    losses: list[float] = []
    for start in range(0, window, chunk):
        xc = xb[:, start : start + chunk]  # [B, K, F]
        last = start + chunk >= window
        if many_to_one and not last:
            with torch.no_grad():  # warm-up chunk: nothing to predict yet
                _, state, _ = model.forward_normalized(xc, state)
            continue
        y_hat, state, _ = model.forward_normalized(xc, state)  # [B, K, O]
        if many_to_one:
            target = model.normalize_y(yb[:, -1], xb[:, -1])  # [B, O]
            loss = torch.mean((y_hat[:, -1] - target) ** 2)
        else:
            target = model.normalize_y(yb[:, start : start + chunk], xc)  # [B, K, O]
            loss = torch.mean((y_hat - target) ** 2)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)  # before
        else:  # measured only: the gradients are left exactly as they are
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            norm = torch.nn.utils.get_total_norm(grads)
        grad_norms.append(float(norm))
        optimizer.step()
        state = state.detach()  # the truncation: carry the value, cut the gradient
        losses.append(loss.detach().item())
    return float(np.mean(losses))


def train(
    series: Series,
    split: Split,
    model_config: ModelConfig,
    cfg: TrainConfig,
    *,
    quiet: bool = False,
) -> TrainResult:
    """Fit a model on the training part, select the epoch on the validation part."""
    many_to_one = not series.return_sequences
    stats = fit_stats(series, split, model_config.residual)
    with deterministic(cfg.seed) as gen:
        device = torch.device(cfg.device)
        model = SequenceModel(model_config, stats).to(device)
        a, b = split.train
        xw, yw = sequence_windows(
            series.x[a:b], series.y[a:b], cfg.window, cfg.effective_stride(many_to_one)
        )  # [N, W, F], [N, W, O]
        x_train, y_train = torch.from_numpy(xw).to(device), torch.from_numpy(yw).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        scheduler = (
            torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
            if cfg.schedule == "cosine"
            else None
        )
        history = History()
        best_state = copy.deepcopy(model.state_dict())
        best_val = math.inf
        show = not quiet and sys.stderr.isatty()
        bar = tqdm(range(1, cfg.epochs + 1), desc=f"train {model_config.cell}", disable=not show)
        for epoch in bar:
            model.train()
            norms: list[float] = []
            losses = [
                _train_batch(model, optimizer, xb, yb, cfg, many_to_one, norms)
                for xb, yb in _shifted(
                    _batches(x_train, y_train, cfg.batch_size, gen),
                    series.target_feature,
                    cfg.level_shift,
                    gen,
                )
            ]
            history.record_gradients(norms, cfg.clip)
            if scheduler is not None:
                scheduler.step()
            val = normalized_mse(model, predict(model, series, split.val, cfg.window))
            history.train_loss.append(float(np.mean(losses)))
            history.val_loss.append(val)
            if val < best_val:
                best_val, history.best_epoch = val, epoch
                best_state = copy.deepcopy(model.state_dict())
            bar.set_postfix(
                loss=f"{history.train_loss[-1]:.4f}",
                val=f"{val:.4f}",
                best=history.best_epoch,
                grad=f"{history.grad_norm[-1]:.3g}",
                clipped=f"{history.clipped[-1]:.0%}",
            )
            if cfg.patience and epoch - history.best_epoch >= cfg.patience:
                history.stopped_early = True
                break
        bar.close()
        model.load_state_dict(best_state)
        model.eval()
    return TrainResult(model=model, stats=stats, history=history)
