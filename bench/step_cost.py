"""What one step of a model's graph costs: onnxruntime on CPU, one thread, per batch size.

Compares model versions before a client switches, e.g. seattle-temp/1 (a 32-wide GRU state)
against seattle-temp/2 (the same GRU plus a 72-reading delay line, a 104-wide row):

    python -m bench.step_cost models/seattle-temp/1 models/seattle-temp/2
    python -m bench.step_cost models/seattle-temp/2 --batches 1,256,4096 --repeats 9

For each model directory and batch size ``B`` it times ``model.onnx`` on ``B`` rows of
zeros, the best of ``--repeats`` rounds (the machine is shared; noise only ever adds), and
prints microseconds per call, per row, and each model's time over the first one's.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from rnnstream.manifest import INPUT_STATE, INPUT_X, Manifest

CALLS_PER_ROUND = 4000  # rows per timed round, spread over calls of B rows


def step_seconds(directory: Path, batch: int, repeats: int) -> float:
    """Best seconds per ``model.onnx`` call on ``batch`` rows, over ``repeats`` rounds."""
    manifest = Manifest.load(directory)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        str(directory / manifest.onnx_file), options, providers=["CPUExecutionProvider"]
    )
    feeds = {
        INPUT_X: np.zeros((batch, manifest.n_features), np.float32),
        INPUT_STATE: np.zeros((batch, manifest.state_size), np.float32),
    }
    calls = max(20, CALLS_PER_ROUND // batch)
    session.run(None, feeds)  # the first call allocates
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        for _ in range(calls):
            session.run(None, feeds)
        best = min(best, (time.perf_counter() - began) / calls)
    return best


def table(directories: Sequence[Path], batches: Sequence[int], repeats: int) -> str:
    """The comparison as text: a row per model and batch size."""
    lines = [f"{'model':<28}{'state':>6}{'B':>7}{'us/call':>10}{'us/row':>9}{'x first':>9}"]
    first: dict[int, float] = {}
    for directory in directories:
        manifest = Manifest.load(directory)
        for batch in batches:
            seconds = step_seconds(directory, batch, repeats)
            first.setdefault(batch, seconds)
            lines.append(
                f"{manifest.name + '/' + manifest.version:<28}{manifest.state_size:>6}{batch:>7}"
                f"{seconds * 1e6:>10.1f}{seconds / batch * 1e6:>9.2f}"
                f"{seconds / first[batch]:>9.2f}"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.step_cost DIR [DIR ...]``."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.step_cost",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("models", nargs="+", type=Path, metavar="DIR", help="model directories")
    parser.add_argument(
        "--batches",
        default="1,64,1024",
        metavar="B,B",
        help="batch sizes, comma-separated (default 1,64,1024)",
    )
    parser.add_argument(
        "--repeats", type=int, default=7, metavar="N", help="timed rounds, best kept (default 7)"
    )
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    if not batches or min(batches) < 1 or args.repeats < 1:
        parser.error("--batches needs positive sizes and --repeats at least 1")
    print(table(args.models, batches, args.repeats))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
