"""``rnnstream train``: fit an RNN/GRU/LSTM on a series and export a verified step graph.

Imports nothing heavy at import time: torch and friends load inside :func:`run`, so
``rnnstream --help`` stays fast and works on a serving install without the [train] extra.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

DATASET_NAMES = ("seattle-temp", "msft-vol", "synthetic")
MISSING_EXTRA = "rnnstream train needs the [train] extra: pip install 'rnnstream[train]'"

DESCRIPTION = """\
Train a recurrent network on a time series and write DIR/model.onnx (a one-step graph:
x [B, F], state [B, S] -> y [B, O], state_out [B, S]), DIR/sequence.onnx (the same
network over a chunk of T steps) and DIR/manifest.json. Before anything is written,
onnxruntime stepping the graph T times is checked against torch running the whole
sequence (max |diff| <= 1e-5); a model that fails is refused.

Data is split by time: the first 70% trains, the next 10% picks the best epoch (early
stopping), the last 20% is the test split that the final table reports, next to a naive
baseline (persistence for forecasts; historical volatility for msft-vol) and to what a
forecaster tries first, scored on the same points one step ahead: persistence, the
seasonal naive (the same hour yesterday for hourly data) and the classical model of the
field fitted on the training part only (a seasonal ARIMA, or GARCH(1,1) for msft-vol; skip
that fit with --no-classical-baseline). A model that forecasts every step is scored the
way those forecasts use the data: one session streamed from the series' first row, errors
counted on the test rows, so its state holds the history they see; the test split from a
fresh session (no history sent first) is scored too (metrics.cold_start). A model worse
than its naive baseline, or than the strongest of the others, is still written, with a
warning on stderr and in the manifest.

How it learns: backpropagation through time (BPTT) unrolls the network over a window of
--window steps and back-propagates the loss through every step. --tbptt K truncates it:
the window is processed in chunks of K steps, the state is carried into the next chunk
but detached, so gradients reach back at most K steps. --clip rescales the gradient
whenever its global norm exceeds the value, which tames the exploding gradients that
long products of recurrent Jacobians produce; the per-epoch log shows the norm before
clipping and how often --clip rescaled it.

Gradient flow through time: after training, the norm of the gradient of the last step's
loss with respect to the state k steps earlier, ||dL_T/dh_(T-k)||, is measured on
held-out windows for k = 0..W. The manifest records the curve (metrics.gradient_flow) and
the memory horizon (metrics.memory_horizon): the k where the norm falls below 1e-3 of its
k = 0 value, "beyond the window" if it never does, or K with --tbptt K, since truncation
stops training's gradient there. --compare-cells also trains the other two cells at the
same size on the same data and draws the three curves in one plot.

The head is linear in what it reads (h_t and, with --taps, the last K inputs), so once the
recurrent weights are trained, its best weights on the training part are a least-squares
problem: --solve-readout solves it (ridge, the penalty picked on validation) and keeps the
answer if validation improves. Gradient descent approaches it slowly when those inputs are
nearly collinear, as consecutive readings of a smooth series are."""

EPILOG = """\
datasets (--data NAME), all loaded offline from installed packages:
  seattle-temp  hourly Seattle temperature 2010 (vega_datasets), forecast the next hour
  msft-vol      daily MSFT prices 1986-2017 (pmdarima), next-5-day realised volatility
                from [log return, log high/low range] over a 20-day window (many-to-one)
  synthetic     seeded noisy sines (seconds to train; for trying things out)
  PATH.csv      any CSV, one row per time step: --targets COL[,COL] [--features COL,...]

examples:
  rnnstream train --data seattle-temp --cell gru --hidden 32 --epochs 20 --out out/seattle-temp/1
  rnnstream train --data msft-vol --cell lstm --hidden 32 --epochs 15 \\
      --out out/msft-vol/1 --plots out/img
  rnnstream train --data synthetic --cell rnn --hidden 16 --epochs 3 --out out/synth/1
  rnnstream train --data sensors.csv --features temp,humidity --targets temp --horizon 6 \\
      --cell lstm --hidden 32 --layers 2 --tbptt 32 --epochs 30 --out models/sensors/1
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``train`` subcommand."""
    p = subparsers.add_parser(
        "train",
        help="train an RNN/GRU/LSTM and export a verified ONNX step graph",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = p.add_argument_group("what to train")
    what.add_argument(
        "--data",
        required=True,
        metavar="NAME|PATH.csv",
        help=f"dataset: {', '.join(DATASET_NAMES)} or a CSV file",
    )
    what.add_argument(
        "--cell", choices=("rnn", "gru", "lstm"), default="gru", help="recurrent cell (default gru)"
    )
    what.add_argument(
        "--hidden", type=int, default=32, metavar="N", help="hidden units per layer (default 32)"
    )
    what.add_argument(
        "--layers", type=int, default=1, metavar="N", help="stacked recurrent layers (default 1)"
    )
    what.add_argument(
        "--features",
        default="",
        metavar="A,B",
        help="CSV only: input columns (default: the targets)",
    )
    what.add_argument("--targets", default="", metavar="C", help="CSV only: column(s) to forecast")
    what.add_argument(
        "--horizon",
        type=int,
        default=None,
        metavar="N",
        help="steps ahead to forecast (default 1; msft-vol: days of future volatility, default 5)",
    )
    what.add_argument(
        "--residual",
        action="store_true",
        help="the network predicts the change from the target's current reading (an input "
        "column), added back inside the graph, which still outputs the reading itself",
    )
    what.add_argument(
        "--taps",
        type=int,
        default=0,
        metavar="K",
        help="keep the last K inputs exactly in the state (a delay line: a fixed shift "
        "register beside the cell's state); the cell reads them with the current input and "
        "the head adds a linear autoregression over them (default 0: none)",
    )
    how = p.add_argument_group("how to train")
    how.add_argument(
        "--epochs", type=int, default=20, metavar="N", help="max passes over the training windows"
    )
    how.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (default 3e-3)")
    how.add_argument(
        "--lr-schedule",
        choices=("constant", "cosine"),
        default="constant",
        help="learning rate over the epochs: constant, or cosine from --lr down to 0 "
        "at the last epoch (default constant)",
    )
    how.add_argument(
        "--batch-size", type=int, default=32, metavar="N", help="windows per batch (default 32)"
    )
    how.add_argument(
        "--window",
        type=int,
        default=None,
        metavar="W",
        help="steps per training window, i.e. how far BPTT unrolls "
        "(default: seattle-temp 168, msft-vol 20 = the model's input length, others 48-64)",
    )
    how.add_argument(
        "--stride",
        type=int,
        default=0,
        metavar="N",
        help="steps between window starts (0: W/4, or 1 for msft-vol)",
    )
    how.add_argument(
        "--level-shift",
        type=float,
        default=0.0,
        metavar="STD",
        help="add one random offset (normal, STD in the target's units) per training window to "
        "the target and to its current reading: the same dynamics at another level, so the "
        "forecast does not hang on the absolute level (default 0: off)",
    )
    how.add_argument(
        "--solve-readout",
        action="store_true",
        help="after training, solve the linear head (on h and, with --taps, on the taps) "
        "in closed form: ridge regression on the training part, the penalty picked on "
        "validation; kept only if validation improves. Gradient descent creeps towards it "
        "when the head's inputs are nearly collinear, as consecutive readings are",
    )
    how.add_argument(
        "--tbptt",
        type=int,
        default=0,
        metavar="K",
        help="truncated BPTT: back-propagate through chunks of K steps, carrying the detached "
        "state across chunks (0: full BPTT over the window)",
    )
    how.add_argument(
        "--clip",
        type=float,
        default=1.0,
        help="clip the global gradient norm to this value (0: off; default 1.0)",
    )
    how.add_argument(
        "--patience",
        type=int,
        default=5,
        metavar="N",
        help="stop after N epochs without validation improvement; keep the best (0: never)",
    )
    how.add_argument(
        "--seed", type=int, default=0, help="random seed; same seed -> same weights on CPU"
    )
    how.add_argument(
        "--device",
        default="cpu",
        help="torch device to train on, e.g. cpu or cuda (export runs on cpu)",
    )
    out = p.add_argument_group("output")
    out.add_argument(
        "--out",
        required=True,
        type=Path,
        metavar="DIR",
        help="writes DIR/model.onnx, DIR/sequence.onnx, DIR/manifest.json",
    )
    out.add_argument(
        "--name", default="", help="model name in the manifest (default: the dataset's)"
    )
    out.add_argument("--version", default="1", help="model version in the manifest (default 1)")
    out.add_argument(
        "--plots",
        type=Path,
        default=None,
        metavar="DIR",
        help="write PNGs here: NAME-{loss,predictions,hidden,gradients,clipping}.png",
    )
    out.add_argument(
        "--compare-cells",
        action="store_true",
        help="also train an Elman RNN, a GRU and an LSTM (whichever --cell is not) of the same "
        "size on the same data and plot their gradient through time: --plots DIR/NAME-cells.png "
        "(needs --plots; only --cell is exported)",
    )
    out.add_argument(
        "--no-classical-baseline",
        dest="classical_baseline",
        action="store_false",
        help="skip the classical baseline (seasonal ARIMA for temperature, GARCH(1,1) for "
        "volatility): its fit takes up to a minute; persistence and the seasonal naive "
        "are still scored",
    )
    out.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bar, no table (warnings still go to stderr)",
    )
    p.set_defaults(func=run)


def _split(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


def reproduce_command(args: argparse.Namespace, window: int, horizon: int) -> str:
    """The full command line, every training flag explicit, that reproduces this run."""
    parts = [
        "rnnstream",
        "train",
        "--data",
        args.data,
        "--cell",
        args.cell,
        "--hidden",
        str(args.hidden),
    ]
    if args.residual:
        parts.append("--residual")
    if args.taps:
        parts += ["--taps", str(args.taps)]
    parts += ["--layers", str(args.layers), "--epochs", str(args.epochs), "--lr", repr(args.lr)]
    if args.lr_schedule != "constant":
        parts += ["--lr-schedule", args.lr_schedule]
    if args.level_shift:
        parts += ["--level-shift", repr(args.level_shift)]
    if args.solve_readout:
        parts.append("--solve-readout")
    parts += [
        "--batch-size",
        str(args.batch_size),
        "--window",
        str(window),
        "--stride",
        str(args.stride),
    ]
    parts += [
        "--tbptt",
        str(args.tbptt),
        "--clip",
        repr(args.clip),
        "--patience",
        str(args.patience),
    ]
    parts += ["--seed", str(args.seed), "--horizon", str(horizon)]
    if args.features:
        parts += ["--features", args.features]
    if args.targets:
        parts += ["--targets", args.targets]
    if args.name:
        parts += ["--name", args.name]
    parts += ["--version", args.version, "--out", str(args.out)]
    if args.plots is not None:
        parts += ["--plots", str(args.plots)]
    if not args.classical_baseline:
        parts.append("--no-classical-baseline")
    return shlex.join(parts)


def run(args: argparse.Namespace) -> int:
    """Run ``rnnstream train``; returns the exit code."""
    try:
        import torch  # noqa: F401

        from rnnstream.export import pipeline
        from rnnstream.export.data import DataError, defaults_for
        from rnnstream.export.onnx import ParityError
        from rnnstream.export.train import TrainConfig
    except ImportError:
        print(MISSING_EXTRA, file=sys.stderr)
        return 2
    defaults = defaults_for(args.data)
    window = args.window if args.window is not None else defaults.window
    horizon = args.horizon if args.horizon is not None else defaults.horizon
    try:
        if args.hidden < 1 or args.layers < 1 or horizon < 1:
            raise ValueError("--hidden, --layers and --horizon must be positive")
        if args.taps < 0:
            raise ValueError("--taps must be 0 or positive")
        if args.compare_cells and args.plots is None:
            raise ValueError("--compare-cells draws a plot: give --plots DIR")
        spec = pipeline.RunSpec(
            data=args.data,
            cell=args.cell,
            hidden_size=args.hidden,
            layers=args.layers,
            out=args.out,
            train=TrainConfig(
                epochs=args.epochs,
                lr=args.lr,
                batch_size=args.batch_size,
                window=window,
                stride=args.stride,
                tbptt=args.tbptt,
                clip=args.clip,
                patience=args.patience,
                schedule=args.lr_schedule,
                level_shift=args.level_shift,
                seed=args.seed,
                device=args.device,
            ),
            horizon=horizon,
            features=_split(args.features),
            targets=_split(args.targets),
            name=args.name,
            version=args.version,
            plots=args.plots,
            quiet=args.quiet,
            command=reproduce_command(args, window, horizon),
            compare_cells=args.compare_cells,
            residual=args.residual,
            taps=args.taps,
            classical_baseline=args.classical_baseline,
            solve_readout=args.solve_readout,
        )
        report = pipeline.run(spec, sys.stdout)
    except (DataError, ParityError, ValueError) as exc:
        print(f"rnnstream train: error: {exc}", file=sys.stderr)
        return 1
    for warning in report.manifest.warnings:
        print(f"rnnstream train: warning: {warning}", file=sys.stderr)
    return 0
