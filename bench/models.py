"""The benchmark model: a GRU (H=64, F=8, O=1) exported as the step graph, cached on disk.

Built with the ``export`` package exactly as ``rnnstream train`` would write it (random
weights with a fixed seed: speed does not depend on what the weights learned), into
``bench/.cache/models/<name>/1/`` unless another root is given. Every system in the
benchmark serves this same ``model.onnx``.

    python -m bench.models            # prints the model repository it built (or found)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(__file__).resolve().parent / ".cache" / "models"


@dataclass(frozen=True)
class BenchModel:
    """The shape of a benchmark model."""

    name: str = "bench-gru"
    cell: str = "gru"
    hidden_size: int = 64
    n_features: int = 8
    n_outputs: int = 1
    layers: int = 1
    seed: int = 0

    @property
    def state_size(self) -> int:
        """Flattened state width (LSTM: h and c)."""
        return (2 if self.cell == "lstm" else 1) * self.layers * self.hidden_size


DEFAULT = BenchModel()


def model_dir(root: Path, model: BenchModel = DEFAULT) -> Path:
    """``root/<name>/1``: where the artifact lies."""
    return root / model.name / "1"


def build(root: Path = CACHE, model: BenchModel = DEFAULT, force: bool = False) -> Path:
    """Export the model into ``root/<name>/1`` (once; reused when present); returns ``root``."""
    out = model_dir(root, model)
    if not force and (out / "model.onnx").is_file() and (out / "manifest.json").is_file():
        return root
    import torch

    from rnnstream.export.model import ModelConfig, SequenceModel
    from rnnstream.export.onnx import write_artifact
    from rnnstream.manifest import Manifest

    torch.manual_seed(model.seed)
    config = ModelConfig(
        cell=model.cell,
        n_features=model.n_features,
        n_outputs=model.n_outputs,
        hidden_size=model.hidden_size,
        layers=model.layers,
    )
    net = SequenceModel(config)
    manifest = Manifest(
        name=model.name,
        version="1",
        cell=model.cell,
        layers=model.layers,
        hidden_size=model.hidden_size,
        n_features=model.n_features,
        n_outputs=model.n_outputs,
        state_size=model.state_size,
        feature_names=[f"x{i}" for i in range(model.n_features)],
        output_names=[f"y{i}" for i in range(model.n_outputs)],
        description=f"benchmark {model.cell.upper()} H={model.hidden_size}, random weights",
        config=config.to_dict(),
        command="python -m bench.models",
    )
    write_artifact(net, manifest, out)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    """Build the bench model and print the repository path."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--root", type=Path, default=CACHE, help=f"model repository (default {CACHE})")
    p.add_argument("--force", action="store_true", help="rebuild even when present")
    args = p.parse_args(argv)
    root = build(args.root, force=args.force)
    print(model_dir(root))
    return 0


if __name__ == "__main__":
    sys.exit(main())
