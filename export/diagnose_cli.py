"""``rnnstream diagnose``: the gradient through time of a model already written to disk.

For an artifact directory (``model.onnx`` + ``manifest.json``), rebuild the torch network
from the graph's weights (checked against the graph), measure ``||dL_T / dh_(T-k)||`` on
held-out windows of the data it was trained on and print the memory horizon;
``--write-manifest`` adds ``memory_horizon`` and ``gradient_flow`` to the manifest's
``metrics`` (no other key changes, the ONNX files stay byte for byte the same).
Imports nothing heavy at import time, like ``rnnstream train``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

MISSING_EXTRA = "rnnstream diagnose needs the [train] extra: pip install 'rnnstream[train]'"

DESCRIPTION = """\
Measure the gradient through time of a written model: rebuild the torch network from
DIR/model.onnx (checked against the graph), then, on held-out windows of the data it was
trained on, the norm of the gradient of the last step's loss with respect to the state k
steps earlier, ||dL_T/dh_(T-k)||, for k = 0..W. Prints the memory horizon: the k where it
falls below 1e-3 of its k = 0 value. --write-manifest only adds keys to the manifest's
metrics; the ONNX files are not touched."""

EPILOG = """\
examples:
  rnnstream diagnose models/seattle-temp/1
  rnnstream diagnose models/msft-vol/1 --plots docs/img --write-manifest
  rnnstream diagnose out/sensors/1 --data sensors.csv --features temp,humidity --targets temp
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``diagnose`` subcommand."""
    p = subparsers.add_parser(
        "diagnose",
        help="measure a written model's gradient through time and memory horizon",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model_dir", type=Path, metavar="DIR", help="holds model.onnx, manifest.json")
    p.add_argument(
        "--data",
        default="",
        metavar="NAME|PATH.csv",
        help="the data it was trained on (default: the manifest's data.name)",
    )
    p.add_argument("--features", default="", metavar="A,B", help="CSV only: input columns")
    p.add_argument("--targets", default="", metavar="C", help="CSV only: column(s) forecast")
    p.add_argument(
        "--plots", type=Path, default=None, metavar="DIR", help="write DIR/NAME-gradients.png"
    )
    p.add_argument(
        "--write-manifest",
        action="store_true",
        help="add metrics.memory_horizon and metrics.gradient_flow to DIR/manifest.json",
    )
    p.set_defaults(func=run)


def _split(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


def run(args: argparse.Namespace) -> int:
    """Run ``rnnstream diagnose``; returns the exit code."""
    try:
        from rnnstream.export import data as datasets
        from rnnstream.export.artifact_model import load_model
        from rnnstream.export.gradients import gradient_flow
        from rnnstream.export.onnx import ParityError
        from rnnstream.manifest import Manifest, ManifestError
    except ImportError:
        print(MISSING_EXTRA, file=sys.stderr)
        return 2
    try:
        manifest = Manifest.load(args.model_dir)
        model = load_model(args.model_dir)
        window = int(manifest.config["window"])
        series = datasets.load(
            args.data or manifest.data["name"],
            window=window,
            horizon=int(manifest.data["horizon"]),
            features=_split(args.features) or None,
            targets=_split(args.targets) or None,
            seed=int(manifest.config["train"]["seed"]),
        )
        split = datasets.time_split(len(series), gap=series.horizon)
        tbptt = int(manifest.config["train"].get("tbptt", 0))
        flow = gradient_flow(model, series, split, window, tbptt)
    except (datasets.DataError, ParityError, ManifestError, KeyError, ValueError) as exc:
        print(f"rnnstream diagnose: error: {exc}", file=sys.stderr)
        return 1
    print(f"{manifest.name}/{manifest.version} ({manifest.cell.upper()}): {flow.describe()}")
    if args.plots is not None:
        from rnnstream.export.plots import plot_gradient_flow

        args.plots.mkdir(parents=True, exist_ok=True)
        path = plot_gradient_flow(
            {manifest.cell.upper(): flow},
            f"{manifest.name}: gradient through time, held-out windows",
            args.plots / f"{manifest.name}-gradients.png",
        )
        print(f"plot {path}")
    if args.write_manifest:
        manifest.metrics["memory_horizon"] = flow.memory_horizon()
        manifest.metrics["gradient_flow"] = flow.to_dict()
        print(f"wrote {manifest.save(args.model_dir)}")
    return 0
