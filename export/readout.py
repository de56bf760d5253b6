"""The linear readout solved in closed form: ridge regression of the head on what it reads.

The head is linear in what it reads at step ``t``: the top layer's ``h_t`` and, with taps,
the window ``[z_{t-K} .. z_t]`` of normalised inputs. With the recurrent weights fixed, the
readout that fits the training part best is a least-squares problem with an exact answer.
Adam only creeps towards it when those columns are nearly collinear, as an hourly series'
consecutive readings are (they correlate above 0.99): gradient steps crawl along the
directions the data barely moves in. Solving it directly takes well under a second.

``rnnstream train --solve-readout`` runs :func:`solve_readout` after training: the ridge
penalty (on the weights, not the bias) is chosen on the validation part, and a solution
that does not lower the validation error leaves the model as it was.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from rnnstream.export.data import Series, Split
from rnnstream.export.model import SequenceModel
from rnnstream.export.train import normalized_mse, predict

PENALTIES = (1e-10, 1e-8, 1e-6, 1e-4, 1e-2)  # ridge penalty per training row, tried in turn


@dataclass
class ReadoutFit:
    """What the closed-form solve did; saved in the manifest's ``config.readout``."""

    penalty: float  # the ridge penalty per training row picked on validation
    val_mse_trained: float  # normalised validation MSE with the head training left
    val_mse_solved: float  # the same with the solved head
    applied: bool  # False: the solved head was no better on validation, the trained one kept
    rows: int  # rows the solve fitted (level-shifted copies of the training part included)
    columns: int  # weights solved for per output (the bias besides)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (floats to 6 significant digits)."""
        return {
            k: float(f"{v:.6g}") if isinstance(v, float) else v for k, v in asdict(self).items()
        }


def readout_inputs(model: SequenceModel, x: np.ndarray) -> np.ndarray:
    """What the head reads at each step of ``x [T, F]`` streamed from the zero state.

    ``[T, H + (K+1)F]``: ``h_t`` of the top layer, then (with taps) the window; float64.
    """
    with torch.no_grad():
        xt = torch.from_numpy(x).unsqueeze(0).to(model.x_mean.device)  # [1, T, F]
        hidden, window, _ = model.head_inputs(xt)  # [1, T, H], [1, T, (K+1)F] or None
        columns = [hidden[0]] + ([window[0]] if window is not None else [])
        return torch.cat(columns, dim=1).double().cpu().numpy()  # [T, C]


def solve(features: np.ndarray, targets: np.ndarray, penalty: float) -> np.ndarray:
    """Ridge regression, unpenalised bias: ``[N, C]``, ``[N, O]`` -> ``[C + 1, O]``, bias last."""
    design = np.concatenate([features, np.ones((len(features), 1))], axis=1)  # [N, C+1]
    ridge = penalty * len(features) * np.eye(design.shape[1])
    ridge[-1, -1] = 0.0
    return np.linalg.solve(design.T @ design + ridge, design.T @ targets)  # [C+1, O]


def set_readout(model: SequenceModel, coef: np.ndarray) -> None:
    """Write a solved ``[C + 1, O]`` readout into the head and, with taps, the taps' head."""
    h = model.config.hidden_size
    with torch.no_grad():
        model.head.weight.copy_(torch.from_numpy(coef[:h].T.copy()))
        model.head.bias.copy_(torch.from_numpy(coef[-1].copy()))
        if model.taps_head is not None:
            model.taps_head.weight.copy_(torch.from_numpy(coef[h:-1].T.copy()))


def _training_rows(
    model: SequenceModel, series: Series, split: Split, offset: float
) -> tuple[np.ndarray, np.ndarray]:
    """Features and normalised targets of the training part moved by ``offset``.

    The offset goes to the target and its input column, as ``--level-shift`` does in
    training. The part is streamed from the zero state as one sequence; its first ``K``
    rows, where the taps still hold made-up history, are left out.
    """
    a, b = split.train
    x, y = series.x[a:b].copy(), series.y[a:b] + np.float32(offset)
    if offset:
        column = series.target_feature
        assert column is not None  # level_shift > 0 was checked against the data
        x[:, column] += np.float32(offset)
    features = readout_inputs(model, x)  # [T, C]
    with torch.no_grad():
        targets = model.normalize_y(torch.from_numpy(y), torch.from_numpy(x))  # [T, O]
    skip = model.config.taps
    return features[skip:], targets.double().numpy()[skip:]


def solve_readout(
    model: SequenceModel, series: Series, split: Split, window: int, level_shift: float = 0.0
) -> ReadoutFit:
    """Solve the head on the training part, pick the penalty on validation, keep it if better.

    With ``level_shift`` the solve also sees the training part moved by ``±level_shift`` and
    ``±2 level_shift``, the spread the network was trained on. Validation is scored as in
    training, streamed from the series' start. The model must be on the CPU.
    """
    offsets = [0.0] + [s * level_shift for s in (-2, -1, 1, 2)] if level_shift > 0 else [0.0]
    parts = [_training_rows(model, series, split, offset) for offset in offsets]
    features = np.concatenate([f for f, _ in parts])  # [N, C]
    targets = np.concatenate([t for _, t in parts])  # [N, O]

    def val_mse() -> float:
        return normalized_mse(model, predict(model, series, split.val, window, from_start=True))

    trained = {k: v.detach().clone() for k, v in model.state_dict().items()}
    val_trained = val_mse()
    scores = []
    for penalty in PENALTIES:
        set_readout(model, solve(features, targets, penalty))
        scores.append((val_mse(), penalty))
    val_solved, penalty = min(scores)
    applied = val_solved < val_trained
    if applied:
        set_readout(model, solve(features, targets, penalty))
    else:
        model.load_state_dict(trained)
    return ReadoutFit(
        penalty=penalty,
        val_mse_trained=val_trained,
        val_mse_solved=val_solved,
        applied=applied,
        rows=len(features),
        columns=features.shape[1],
    )
