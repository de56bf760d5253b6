"""The model artifact contract: ``models/<name>/<version>/{model.onnx, manifest.json}``.

The step graph maps ``(x [B, F], state [B, S]) -> (y [B, O], state_out [B, S])``: one
time step of a recurrent network for a batch of independent sessions. ``state`` is the
whole recurrent state flattened batch first (for an L-layer LSTM, ``S = 2 * L * H``, h
then c), so a server can keep it as one opaque row per session. Normalisation of inputs
and de-normalisation of outputs happen inside the graph.

An optional ``sequence.onnx`` holds the same weights over a whole chunk of steps
(``x [B, T, F] -> y [B, T, O]``), so many steps of one message cost one call.

``manifest.json`` says everything the server and clients need to know about the graph.
This module is plain Python (json + dataclasses): the exporter writes it, the server and
the SDK read it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFEST_FILE = "manifest.json"
ONNX_FILE = "model.onnx"
SEQUENCE_ONNX_FILE = "sequence.onnx"
FORMAT_VERSION = 1

INPUT_X = "x"
INPUT_STATE = "state"
OUTPUT_Y = "y"
OUTPUT_STATE = "state_out"

CELLS: tuple[str, ...] = ("rnn", "gru", "lstm")
TASKS: tuple[str, ...] = ("forecast", "classify")


class ManifestError(ValueError):
    """A manifest that is missing, unreadable or inconsistent; the message says what."""


def state_size(cell: str, layers: int, hidden_size: int, taps: int = 0, n_features: int = 1) -> int:
    """Flattened state width: ``L * H`` for rnn and gru, ``2 * L * H`` for lstm (h, then c).

    A model with a delay line carries ``taps * n_features`` more: its last inputs, after the
    cell's part.
    """
    return (2 if cell == "lstm" else 1) * layers * hidden_size + taps * n_features


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Manifest:
    """What ``manifest.json`` records about one model version.

    Example::

        m = Manifest.load(Path("models/seattle-temp/1"))
        m.n_features, m.n_outputs, m.state_size   # (1, 1, 64)
    """

    name: str
    version: str
    cell: str
    layers: int
    hidden_size: int
    n_features: int
    n_outputs: int
    state_size: int
    feature_names: list[str]
    output_names: list[str]
    task: str = "forecast"
    labels: list[str] = field(default_factory=list)
    # The default mode: True many-to-many (y every step), False many-to-one (y at the end).
    return_sequences: bool = True
    description: str = ""
    # "zeros", or an explicit [state_size] list of floats.
    initial_state: str | list[float] = "zeros"
    # How to compute each input feature from raw data (e.g. from daily prices).
    feature_recipe: dict[str, str] = field(default_factory=dict)
    # The data it was trained on: name, source, rows, split sizes, ...
    data: dict[str, Any] = field(default_factory=dict)
    # Held-out metrics against a naive baseline.
    metrics: dict[str, Any] = field(default_factory=dict)
    # What the exporter found wrong with the model without refusing it (e.g. worse than
    # its baseline on held-out data), one sentence each; empty when nothing was found.
    warnings: list[str] = field(default_factory=list)
    # The @dataclass config of the torch model and the training run.
    config: dict[str, Any] = field(default_factory=dict)
    onnx_file: str = ONNX_FILE
    onnx_sha256: str = ""
    # Optional: the same network over whole chunks, ``(x [B, T, F], state [B, S]) ->
    # (y [B, T, O], state_out [B, S])`` with B and T dynamic. A server runs a message of
    # many steps through it in one call; empty when the artifact has none.
    sequence_onnx_file: str = ""
    sequence_onnx_sha256: str = ""
    opset: int = 17
    versions: dict[str, str] = field(default_factory=dict)
    # The exact command that produced the artifact.
    command: str = ""
    format_version: int = FORMAT_VERSION
    # K: the last K inputs the state row keeps after the cell's part (a delay line); 0: none.
    taps: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check the manifest's own consistency; raise ManifestError saying what is wrong."""
        problems: list[str] = []
        if self.cell not in CELLS:
            problems.append(f"cell is {self.cell!r}, expected one of {', '.join(CELLS)}")
        if self.task not in TASKS:
            problems.append(f"task is {self.task!r}, expected one of {', '.join(TASKS)}")
        for key in ("layers", "hidden_size", "n_features", "n_outputs", "state_size"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                problems.append(f"{key} is {value!r}, expected a positive integer")
        if not problems:
            expected = state_size(
                self.cell, self.layers, self.hidden_size, self.taps, self.n_features
            )
            if self.state_size != expected:
                problems.append(
                    f"state_size is {self.state_size}, but a {self.layers}-layer {self.cell} "
                    f"with hidden_size {self.hidden_size} has state_size {expected}"
                )
            if len(self.feature_names) != self.n_features:
                problems.append(
                    f"feature_names has {len(self.feature_names)} names for "
                    f"n_features={self.n_features}"
                )
            if len(self.output_names) != self.n_outputs:
                problems.append(
                    f"output_names has {len(self.output_names)} names for "
                    f"n_outputs={self.n_outputs}"
                )
            if self.task == "classify" and len(self.labels) != self.n_outputs:
                problems.append(
                    f"a classify model needs one label per output: {len(self.labels)} labels "
                    f"for n_outputs={self.n_outputs}"
                )
            if isinstance(self.initial_state, list) and len(self.initial_state) != self.state_size:
                problems.append(
                    f"initial_state has {len(self.initial_state)} values for "
                    f"state_size={self.state_size}"
                )
            elif isinstance(self.initial_state, str) and self.initial_state != "zeros":
                problems.append(
                    f"initial_state is {self.initial_state!r}: use 'zeros' or a list of floats"
                )
        if problems:
            raise ManifestError(f"manifest of {self.name}/{self.version}: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """The manifest as JSON-ready data.

        An empty ``warnings`` and zero ``taps`` are left out, so a model without them stays
        loadable by servers older than those keys (they refuse unknown keys).
        """
        data = dataclasses.asdict(self)
        if not data["warnings"]:
            del data["warnings"]
        if not data["taps"]:
            del data["taps"]
        return data

    def save(self, directory: Path) -> Path:
        """Write ``directory/manifest.json`` (pretty, key order stable); return its path."""
        path = directory / MANIFEST_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "manifest") -> Manifest:
        """Build from parsed JSON, refusing unknown or missing keys with a clear message."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ManifestError(f"{where}: unknown keys {unknown}; known keys: {sorted(known)}")
        required = {
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
        missing = sorted(required - set(data))
        if missing:
            raise ManifestError(f"{where}: missing keys {missing}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ManifestError(f"{where}: {exc}") from exc

    @classmethod
    def load(cls, directory: Path) -> Manifest:
        """Read ``directory/manifest.json``."""
        path = directory / MANIFEST_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ManifestError(f"{path} does not exist") from exc
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{path} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ManifestError(f"{path} must hold a JSON object")
        return cls.from_dict(data, where=str(path))
