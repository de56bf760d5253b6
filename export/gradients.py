"""How far back a trained network's gradient reaches: ``||dL_T / dh_(T-k)||`` against ``k``.

On held-out windows of ``W`` steps, each run from the zero state, ``L_T`` is the squared
error of the *last* step's prediction and ``h_t`` the whole recurrent state after step ``t``
(``h``, and for an LSTM also ``c``: the row the server carries; ``h_0`` is the initial
state). The curve is the mean over windows of the gradient norm ``k`` steps back, for
``k = 0 .. W``. A product of ``k`` recurrent Jacobians sits between ``L_T`` and
``h_(T-k)``: when those shrink vectors (an Elman RNN's ``tanh`` and small weights), the
curve falls geometrically and an input ``k`` steps back cannot teach the network anything;
gates (GRU, LSTM) can hold it near flat.

The **memory horizon** is the first ``k`` at which the norm has fallen below
:data:`VANISHED` times its value at ``k = 0``. If it never does inside the window it is
:data:`BEYOND_WINDOW`. With truncated BPTT (``--tbptt K``) training's gradient never
reached further back than ``K`` steps, whatever the curve does, so the horizon is at
most ``K`` and the record says that truncation set it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rnnstream.export.data import Series, Split, sequence_windows
from rnnstream.export.model import SequenceModel

VANISHED = 1e-3  # the fraction of the k = 0 norm below which the gradient counts as gone
BEYOND_WINDOW = "beyond the window"
HELD_OUT_WINDOWS = 64  # windows of the test split the curve is averaged over


@dataclass(frozen=True)
class GradientFlow:
    """The mean ``||dL_T / dh_(T-k)||`` over held-out windows, for ``k = 0 .. W``."""

    norms: np.ndarray  # [W + 1], index k
    windows: int  # how many held-out windows were averaged
    tbptt: int = 0  # K of the training run; 0: full BPTT over the window

    @property
    def steps(self) -> int:
        """``W``, the window length: the largest ``k`` on the curve."""
        return len(self.norms) - 1

    @property
    def reach(self) -> int:
        """How many steps back training's gradient could go: ``K`` with truncation, else ``W``."""
        return min(self.tbptt, self.steps) if self.tbptt else self.steps

    def vanished_at(self) -> int | None:
        """The first ``k`` where the norm is below ``VANISHED`` of its ``k = 0`` value, or None."""
        below = np.flatnonzero(self.norms < VANISHED * self.norms[0])
        return int(below[0]) if len(below) else None

    def limited_by(self) -> str:
        """What sets the memory horizon: ``vanishing``, ``tbptt`` or ``window``."""
        k = self.vanished_at()
        if self.tbptt and self.reach < self.steps and (k is None or k > self.reach):
            return "tbptt"
        return "window" if k is None else "vanishing"

    def memory_horizon(self) -> int | str:
        """The horizon in steps, or :data:`BEYOND_WINDOW` if the gradient never vanished."""
        limit = self.limited_by()
        if limit == "tbptt":
            return self.reach
        if limit == "window":
            return BEYOND_WINDOW
        return int(self.vanished_at() or 0)

    def describe(self) -> str:
        """One sentence for the training log."""
        horizon = self.memory_horizon()
        limit = self.limited_by()
        if limit == "tbptt":
            return (
                f"memory horizon {horizon} steps: --tbptt {self.tbptt} cuts the gradient there "
                "in training, whatever the curve does past it"
            )
        if limit == "window":
            return (
                f"memory horizon beyond the window: ||dL_T/dh_(T-k)|| is still above "
                f"{VANISHED:g} of its k=0 value at k={self.steps}"
            )
        return (
            f"memory horizon {horizon} steps: ||dL_T/dh_(T-k)|| falls below {VANISHED:g} of "
            f"its k=0 value there"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the curve (4 significant digits) and how it was measured."""
        return {
            "norms": [float(f"{v:.4g}") for v in self.norms],
            "k": "index into norms: steps back from the last step of the window",
            "split": "test",
            "windows": self.windows,
            "window": self.steps,
            "threshold": VANISHED,
            "reach": self.reach,
            "limited_by": self.limited_by(),
        }


def held_out_windows(
    series: Series, split: Split, window: int, count: int = HELD_OUT_WINDOWS
) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``count`` windows spread evenly over the test split: ``[N, W, F]``, ``[N, W, O]``."""
    a, b = split.test
    stride = max(1, (b - a - window) // max(1, count - 1))
    x, y = sequence_windows(series.x[a:b], series.y[a:b], window, stride)
    return x[:count], y[:count]


def gradient_norms(model: SequenceModel, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mean over windows of ``||dL_T / dh_(T-k)||`` for ``k = 0 .. W``: ``[W + 1]``.

    ``x [N, W, F]`` and ``y [N, W, O]`` in raw units; ``L_T`` is the squared error of the
    last step in output-std units, averaged over outputs, one loss per window. Summing the
    windows' losses gives each window's gradient in its own row, since windows do not
    interact.
    """
    model = model.eval()
    device = model.x_mean.device
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)  # [N, W, F]
    y_last = torch.from_numpy(np.asarray(y[:, -1], dtype=np.float32)).to(device)  # [N, O]
    target = model.normalize_y(y_last, xt[:, -1])  # [N, O]
    with torch.enable_grad():
        state = model.zero_state(len(xt)).requires_grad_(True)  # h_0, [N, S]
        states = [state]
        for t in range(xt.shape[1]):  # step by step, so every h_t is a node of the graph
            _, state, _ = model.forward_normalized(xt[:, t : t + 1], state)
            states.append(state)
        # The prediction read from h_T itself (the top layer's h block, and the taps if
        # any), so that L_T depends on the last state node and the curve starts at k = 0.
        y_hat = model.readout(state)  # [N, O]
        loss = torch.mean((y_hat - target) ** 2, dim=1).sum()  # sum over windows of L_T
        grads = torch.autograd.grad(loss, states)  # W + 1 x [N, S]; grads[t] = dL_T/dh_t
    norms = torch.stack([g.norm(dim=1) for g in grads], dim=1)  # [N, W + 1], index t
    return norms.flip(1).mean(dim=0).detach().cpu().numpy().astype(np.float64)  # index k = W - t


def gradient_flow(
    model: SequenceModel, series: Series, split: Split, window: int, tbptt: int = 0
) -> GradientFlow:
    """The gradient-through-time curve of ``model`` on held-out windows of ``window`` steps."""
    x, y = held_out_windows(series, split, window)
    return GradientFlow(norms=gradient_norms(model, x, y), windows=len(x), tbptt=tbptt)
