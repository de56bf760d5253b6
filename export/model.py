"""The recurrent network: Elman RNN, GRU or LSTM, 1..n layers, a linear head.

Per layer and step (``x_t`` the layer input, ``h_{t-1}`` its previous state):

- ``rnn``  (Elman): ``h_t = tanh(W_xh x_t + W_hh h_{t-1} + b)``
- ``gru``:  gates ``r, z`` decide how much of ``h_{t-1}`` to reset and to keep
- ``lstm``: a cell ``c_t`` with input/forget/output gates; the state is ``(h_t, c_t)``

and the head reads the top layer: ``y_t = W_hy h_t + b_y``. With ``residual = i`` the head
predicts the *change* from input column ``i`` instead: ``y_t = x_t[i] + W_hy h_t + b_y``
(for a forecast of the next reading of that same column, the network then only has to
learn how much it moves; the graph still outputs the reading itself).

Inputs are raw units: ``(x - x_mean) / x_std`` and ``y * y_std + y_mean`` are buffers inside
the module, so the exported graph takes and returns raw values. The recurrent state is
carried *flattened*, one row per sequence: ``state [B, S]`` with ``S = k * L * H`` (``k = 2``
for the LSTM). A row is the concatenation over layers ``0..L-1`` of ``h``, then (LSTM only)
over layers ``0..L-1`` of ``c``; each block is ``H`` wide.

**Taps** (``taps = K > 0``): a delay line in the recurrent state. The state row then also
carries the last ``K`` normalised inputs, ``S = k * L * H + K * F``: after the cell's
blocks come ``K`` blocks of ``F``, oldest first, ``z_{t-K+1} .. z_t`` after step ``t``.
Each step pushes ``z_t`` in and drops the oldest: in the theory's
``h_t = f(W_xh x_t + W_hh h_{t-1})`` this is an RNN whose ``W_hh`` for those slots is a
fixed, hand-set shift matrix (and ``W_xh`` a fixed copy into the newest slot), never
trained. The cell's input at step ``t`` is the window ``[z_{t-K}, .., z_{t-1}, z_t]``
(the ``K`` taps before the push and the current input), and the head adds a learned
linear autoregression over the same window:
``y_t = (residual path) + W_hy h_t + W_ay [z_{t-K} .. z_t] + b_y``. The network so keeps
the inputs of the last ``K`` steps exactly, however it learns.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from rnnstream.export.data import Stats

CELL_TYPES: dict[str, type[nn.RNN] | type[nn.GRU] | type[nn.LSTM]] = {
    "rnn": nn.RNN,  # Elman, nonlinearity tanh
    "gru": nn.GRU,
    "lstm": nn.LSTM,
}


@dataclass
class ModelConfig:
    """Everything needed to rebuild the network; saved in the manifest's ``config``."""

    cell: str = "gru"  # rnn | gru | lstm
    n_features: int = 1  # F: inputs per step
    n_outputs: int = 1  # O: outputs per step
    hidden_size: int = 32  # H: units per layer
    layers: int = 1  # L: stacked recurrent layers
    residual: int | None = None  # input column the output is a change from; None: plain head
    taps: int = 0  # K: past inputs kept exactly in the state (a delay line); 0: none

    def __post_init__(self) -> None:
        if self.cell not in CELL_TYPES:
            raise ValueError(f"cell is {self.cell!r}, expected one of {', '.join(CELL_TYPES)}")
        if self.residual is not None and not 0 <= self.residual < self.n_features:
            raise ValueError(f"residual column {self.residual} is not one of the inputs")
        if int(self.taps) < 0:
            raise ValueError(f"taps must be 0 or a positive integer, got {self.taps}")
        for key in ("n_features", "n_outputs", "hidden_size", "layers"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"{key} must be a positive integer, got {getattr(self, key)}")

    @property
    def state_blocks(self) -> int:
        """``k * L``: the number of ``H``-wide blocks in a state row."""
        return (2 if self.cell == "lstm" else 1) * self.layers

    @property
    def cell_state_size(self) -> int:
        """The cell's part of a state row: ``k * L * H``."""
        return self.state_blocks * self.hidden_size

    @property
    def state_size(self) -> int:
        """S, the width of a flattened state row: the cell's part, then ``K * F`` taps."""
        return self.cell_state_size + self.taps * self.n_features

    @property
    def cell_input_size(self) -> int:
        """What the cell reads per step: ``x_t`` and, with taps, the ``K`` inputs before it."""
        return (self.taps + 1) * self.n_features

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return asdict(self)


class SequenceModel(nn.Module):
    """A recurrent network over raw-unit sequences with a flattened, batch-first state."""

    def __init__(self, config: ModelConfig, stats: Stats | None = None) -> None:
        super().__init__()
        self.config = config
        cell = CELL_TYPES[config.cell]
        self.rnn = cell(
            input_size=config.cell_input_size,
            hidden_size=config.hidden_size,
            num_layers=config.layers,
            batch_first=True,
        )
        self.head = nn.Linear(config.hidden_size, config.n_outputs)
        # The learned autoregression over the taps' window; head's bias serves both.
        self.taps_head = (
            nn.Linear(config.cell_input_size, config.n_outputs, bias=False) if config.taps else None
        )
        f, o = config.n_features, config.n_outputs
        self.x_mean: Tensor
        self.x_std: Tensor
        self.y_mean: Tensor
        self.y_std: Tensor
        self.register_buffer("x_mean", torch.zeros(f))
        self.register_buffer("x_std", torch.ones(f))
        self.register_buffer("y_mean", torch.zeros(o))
        self.register_buffer("y_std", torch.ones(o))
        if stats is not None:
            self.set_stats(stats)

    def set_stats(self, stats: Stats) -> None:
        """Copy training-split normalisation statistics into the buffers."""
        for name in ("x_mean", "x_std", "y_mean", "y_std"):
            getattr(self, name).copy_(torch.as_tensor(getattr(stats, name), dtype=torch.float32))

    @property
    def state_size(self) -> int:
        """S, the width of a flattened state row."""
        return self.config.state_size

    def zero_state(self, batch: int) -> Tensor:
        """The initial state: zeros ``[B, S]``."""
        return torch.zeros(batch, self.state_size, device=self.x_mean.device)

    def unpack_state(self, state: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        """``[B, S]`` -> torch's layout: ``h [L, B, H]`` or, for the LSTM, ``(h, c)``.

        Only the cell's part of the row; the taps come after it (:meth:`taps_window`).
        """
        if self.config.taps:
            state = state[:, : self.config.cell_state_size]
        blocks = state.reshape(-1, self.config.state_blocks, self.config.hidden_size)  # [B, kL, H]
        blocks = blocks.transpose(0, 1).contiguous()  # [kL, B, H]
        if self.config.cell == "lstm":
            layers = self.config.layers
            return blocks[:layers].contiguous(), blocks[layers:].contiguous()  # [L, B, H] x2
        return blocks  # [L, B, H]

    def pack_state(self, state: Tensor | tuple[Tensor, Tensor]) -> Tensor:
        """Torch's layout (``h [L, B, H]`` or ``(h, c)``) -> the cell's part of a row."""
        blocks = torch.cat(state, dim=0) if isinstance(state, tuple) else state  # [kL, B, H]
        blocks = blocks.transpose(0, 1)  # [B, kL, H]
        return blocks.reshape(blocks.shape[0], self.config.cell_state_size)  # [B, kLH]

    def taps_window(self, z: Tensor, state: Tensor) -> tuple[Tensor, Tensor | None]:
        """The delay line over a chunk: each step's window and the taps after the last step.

        ``z [B, T, F]`` normalised inputs, ``state [B, S]``. Returns ``[B, T, (K+1)*F]``,
        step ``t``'s ``[z_{t-K}, .., z_t]`` oldest first, and the new taps ``[B, K*F]``, the
        last ``K`` inputs oldest first; ``z`` itself and None when ``K = 0``.
        """
        k, f = self.config.taps, self.config.n_features
        if k == 0:
            return z, None
        taps = state[:, self.config.cell_state_size :].reshape(-1, k, f)  # [B, K, F]
        history = torch.cat([taps, z], dim=1)  # [B, K + T, F]
        if z.shape[1] == 1:
            # One step (the step graph, traced with T = 1): the window is the history as
            # it stands, one reshape instead of K + 1 slices, a quarter of the step's cost.
            window = history.reshape(-1, 1, (k + 1) * f)
        else:
            # Slices with constant bounds (the end counted from the back), so the graph
            # keeps T dynamic: lag j = K - i sits at history[:, i : i + T].
            window = torch.cat([history[:, i : (i - k) or None] for i in range(k + 1)], dim=2)
        return window, history[:, -k:].reshape(-1, k * f)  # [B, T, (K+1)*F], [B, K*F]

    def readout(self, state: Tensor) -> Tensor:
        """The normalised prediction read from a state row alone: ``[B, S]`` -> ``[B, O]``.

        The head on the top layer's ``h`` plus, with taps, the autoregression over the
        ``K`` inputs the row holds (the oldest lag of the window has left the row, so its
        term is left out). Used to measure how the loss depends on each state.
        """
        unpacked = self.unpack_state(state)
        top = (unpacked[0] if isinstance(unpacked, tuple) else unpacked)[-1]  # [B, H]
        y = self.head(top)  # [B, O]
        if self.taps_head is not None:
            f = self.config.n_features
            taps = state[:, self.config.cell_state_size :]  # [B, K*F]
            y = y + taps @ self.taps_head.weight[:, f:].T  # [B, O]
        return y

    def base(self, x: Tensor) -> Tensor:
        """What the head's output is added to: ``x[..., residual]`` ``[B, T, 1]``, or 0."""
        r = self.config.residual
        return x[..., r : r + 1] if r is not None else torch.zeros_like(x[..., :1])

    def normalize_y(self, y: Tensor, x: Tensor) -> Tensor:
        """Raw targets ``y`` at inputs ``x`` -> the normalised units the head predicts."""
        return (y - self.base(x) - self.y_mean) / self.y_std

    def head_inputs(
        self, x: Tensor, state: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        """What the heads read at each step of ``x [B, T, F]`` (raw) from ``state [B, S]``.

        Returns the top layer's hidden sequence ``[B, T, H]``, the taps' windows
        ``[B, T, (K+1)*F]`` (None without taps) and the final state ``[B, S]``.
        """
        if state is None:
            state = self.zero_state(x.shape[0])
        z = (x - self.x_mean) / self.x_std  # [B, T, F]
        window, taps = self.taps_window(z, state)  # [B, T, (K+1)*F], [B, K*F]
        hidden, final = self.rnn(window, self.unpack_state(state))  # [B, T, H]
        if taps is None:
            return hidden, None, self.pack_state(final)
        final_row = torch.cat([self.pack_state(final), taps], dim=1)
        # A constant width, so the exported graph declares state_out [B, S].
        return hidden, window, final_row.reshape(z.shape[0], self.state_size)

    def forward_normalized(
        self, x: Tensor, state: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Run ``x [B, T, F]`` (raw) from ``state [B, S]`` (zeros if None).

        Returns normalised outputs ``[B, T, O]``, the final state ``[B, S]`` and the top
        layer's hidden sequence ``[B, T, H]``.
        """
        hidden, window, final_row = self.head_inputs(x, state)
        y = self.head(hidden)  # [B, T, O]
        if self.taps_head is not None and window is not None:
            y = y + self.taps_head(window)
        return y, final_row, hidden  # [B, T, O], [B, S], [B, T, H]

    def forward(self, x: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Run ``x [B, T, F]`` in raw units; returns ``y [B, T, O]`` (raw) and ``state [B, S]``."""
        y, final, _ = self.forward_normalized(x, state)
        y = y * self.y_std + self.y_mean  # [B, T, O]
        if self.config.residual is not None:
            y = y + self.base(x)
        return y, final  # [B, T, O], [B, S]

    def n_parameters(self) -> int:
        """Trainable parameter count."""
        return sum(p.numel() for p in self.parameters())
