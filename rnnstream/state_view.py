"""The recurrent state of a streamed session, as numbers and as a picture.

``rnnstream stream --state-csv`` writes one row per step and one column per state unit;
``--plot-state`` draws the input series, the predictions and, under them, the state units
over time as a heat map. Units are ordered so that similar ones sit together (hierarchical
clustering on their correlation, in numpy), so one can see at a glance which group of
units tracks a cycle and which reacts to jumps.

Plotting needs matplotlib, which comes with the ``[train]`` extra; the plain SDK does not
need it unless ``--plot-state`` is used.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from rnnstream.info import ModelInfo

MISSING_MATPLOTLIB = (
    "--plot-state needs matplotlib, which the [train] extra installs: "
    "pip install 'rnnstream[train]' (or just: pip install matplotlib)"
)


def state_columns(info: ModelInfo) -> list[str]:
    """A name per state unit, after the state row's layout.

    ``h{layer}_{unit}`` for every layer, then (LSTM) ``c{layer}_{unit}``; then, for a
    delay line of ``K`` inputs, ``lag{j}`` per slot (``lag{j}_{feature}`` for several
    inputs), oldest first, ``lag0`` being the current step's input (normalised); ``s{i}``
    when the server does not say the cell, layers and hidden size.
    """
    blocks = 2 if info.cell == "lstm" else 1
    if blocks * info.layers * info.hidden_size != info.cell_units:  # the layout is not known
        return [f"s{i}" for i in range(info.state_size)]
    kinds = ["h", "c"][:blocks]
    cell = [
        f"{kind}{layer}_{unit}"
        for kind in kinds
        for layer in range(info.layers)
        for unit in range(info.hidden_size)
    ]
    f, taps = max(info.n_features, 1), info.taps
    names = [info.feature_names[i] if i < len(info.feature_names) else f"x{i}" for i in range(f)]
    line = [
        f"lag{taps - 1 - slot}" + (f"_{names[i]}" if f > 1 else "")
        for slot in range(taps)
        for i in range(f)
    ]
    return cell + line


def write_state_csv(path: Path, states: np.ndarray, columns: Sequence[str]) -> None:
    """``states [T, S]`` to ``path``: a header of ``columns``, then one row per step."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in states:
            writer.writerow([f"{v:.7g}" for v in row])


def unit_order(states: np.ndarray) -> np.ndarray:
    """An order of the units (columns of ``states [T, S]``) that puts similar ones together.

    Average-linkage hierarchical clustering on the absolute correlation: the two groups
    most alike are merged, one after the other, until one is left; the leaves of that
    tree, in order, are the answer. Units that move together, or exactly against each
    other, end up side by side. Constant units (they correlate with nothing) go last.
    """
    std = states.std(axis=0)
    moving = np.flatnonzero(std > 1e-8)
    still = np.flatnonzero(std <= 1e-8)
    if len(moving) < 3:
        return np.concatenate([moving, still])
    centred = (states[:, moving] - states[:, moving].mean(axis=0)) / std[moving]
    alike = np.abs(centred.T @ centred / len(states))  # [M, M], |correlation|
    groups: list[list[int]] = [[i] for i in range(len(moving))]
    while len(groups) > 1:
        best, pair = -1.0, (0, 1)
        for a in range(len(groups)):
            for b in range(a + 1, len(groups)):
                score = float(alike[np.ix_(groups[a], groups[b])].mean())
                if score > best:
                    best, pair = score, (a, b)
        a, b = pair
        groups[a] = groups[a] + groups[b]
        del groups[b]
    return np.concatenate([moving[groups[0]], still])


def plot_state(
    path: Path,
    x: np.ndarray,
    feature_names: Sequence[str],
    y: np.ndarray,
    output_names: Sequence[str],
    states: np.ndarray,
    columns: Sequence[str],
    title: str,
) -> Path:
    """Inputs ``x [T, F]``, predictions ``y [T, O]`` and ``states [T, S]`` as one PNG.

    Give the cell's units only (``states[:, :info.cell_units]``): a delay line's slots are
    the inputs again, shifted, and would crowd the map.

    Raises ImportError with :data:`MISSING_MATPLOTLIB` when matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError(MISSING_MATPLOTLIB) from exc
    order = unit_order(states)
    fig, (top, middle, bottom) = plt.subplots(
        3,
        1,
        figsize=(10, 8),
        dpi=90,
        sharex=True,
        gridspec_kw={"height_ratios": [1, 1, 3]},
    )
    steps = np.arange(len(states))
    for i, name in enumerate(feature_names):
        top.plot(steps, x[:, i], linewidth=1, label=name)
    top.set_ylabel("input")
    top.legend(fontsize=8, loc="upper right")
    top.set_title(title)
    for i, name in enumerate(output_names):
        middle.plot(steps, y[:, i], linewidth=1, label=name)
    middle.set_ylabel("prediction")
    middle.legend(fontsize=8, loc="upper right")
    limit = float(np.max(np.abs(states))) or 1.0
    image = bottom.imshow(
        states[:, order].T,
        aspect="auto",
        cmap="RdBu_r",
        vmin=-limit,
        vmax=limit,
        interpolation="nearest",
        extent=(-0.5, len(states) - 0.5, len(order) - 0.5, -0.5),
    )
    every = max(1, len(order) // 32)
    bottom.set_yticks(np.arange(0, len(order), every))
    bottom.set_yticklabels([columns[i] for i in order[::every]], fontsize=6)
    bottom.set_ylabel("state unit (similar ones together)")
    bottom.set_xlabel("step")
    fig.colorbar(image, ax=[top, middle, bottom], label="state value", shrink=0.6)
    fig.savefig(path)
    plt.close(fig)
    return path
