"""Protobuf <-> numpy, and the checks that make a message's arrays safe to run.

One place decodes request payloads into float32 arrays (refusing wrong widths, empty or
non-finite inputs with a message that says what to send instead) and encodes results
back. Tested without a network.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rnnstream.manifest import Manifest
from rnnstream.v1 import rnnstream_pb2 as pb
from service.errors import InvalidArgument, ResourceExhausted
from service.graph import StepGraph
from service.sessions import EndReason

# Below this many values, element-wise conversion beats numpy's generic sequence path.
SMALL = 48


def _floats(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """A repeated float field (or an already decoded array) as a float32 array."""
    if isinstance(values, np.ndarray):
        return values
    n = len(values)
    if n <= SMALL:
        return np.fromiter(values, dtype=np.float32, count=n)
    return np.asarray(values, dtype=np.float32)


def decode_steps(
    values: Sequence[float] | np.ndarray, manifest: Manifest, max_steps: int, field: str
) -> np.ndarray:
    """Row-major ``[n_steps * F]`` floats -> ``[n_steps, F]`` float32, checked.

    ``values`` is the protobuf field or the array ``wire.StepsFrame`` already decoded.
    """
    x = _floats(values)
    f = manifest.n_features
    if x.size == 0:
        raise InvalidArgument(
            f"{field} is empty: send at least one step, row-major [n_steps, {f}] "
            f"({f} value{'s' if f != 1 else ''} per step for model {manifest.name})"
        )
    if x.size % f:
        raise InvalidArgument(
            f"{field} has {x.size} values, but model {manifest.name} takes {f} feature"
            f"{'s' if f != 1 else ''} per step: send a multiple of {f} values, "
            f"row-major [n_steps, {f}]"
        )
    n = x.size // f
    if n > max_steps:
        raise ResourceExhausted(
            f"{field} carries {n} steps; the limit is {max_steps} per message: split it "
            "into several messages"
        )
    _check_finite(x, f, field)
    return x.reshape(n, f)  # [n_steps, F]


def decode_sequences(request: pb.PredictRequest, manifest: Manifest, max_steps: int) -> np.ndarray:
    """PredictRequest.x ``[n_sequences * T * F]`` -> ``[n_sequences, T, F]`` float32, checked."""
    n_seq = request.n_sequences
    f = manifest.n_features
    if n_seq == 0:
        raise InvalidArgument(
            "PredictRequest.n_sequences is 0: set it to the number of sequences in x, "
            f"which is row-major [n_sequences, T, {f}]"
        )
    x = _floats(request.x)
    per_sequence, rest = divmod(x.size, n_seq)
    if x.size == 0 or rest or per_sequence % f:
        raise InvalidArgument(
            f"PredictRequest.x has {x.size} values, which is not n_sequences={n_seq} "
            f"sequences of T steps of {f} feature{'s' if f != 1 else ''} (model "
            f"{manifest.name}): send n_sequences * T * {f} values, row-major "
            f"[n_sequences, T, {f}], T >= 1"
        )
    steps = per_sequence // f
    if n_seq * steps > max_steps:
        raise ResourceExhausted(
            f"PredictRequest carries {n_seq * steps} steps; the limit is {max_steps} per "
            "message: send fewer or shorter sequences per call"
        )
    _check_finite(x, f, "PredictRequest.x")
    return x.reshape(n_seq, steps, f)  # [n_sequences, T, F]


def _check_finite(x: np.ndarray, n_features: int, field: str) -> None:
    """Refuse NaN and infinities, naming the first offending step and feature."""
    if np.isfinite(x).all():
        return
    bad = int(np.flatnonzero(~np.isfinite(x))[0])
    step, feature = divmod(bad, n_features)
    raise InvalidArgument(
        f"{field} has a non-finite value ({x[bad]}) at step {step} of the message, feature "
        f"{feature}: send finite numbers only (fill gaps in the sensor data before sending)"
    )


def model_info(manifest: Manifest, graph: StepGraph) -> pb.ModelInfo:
    """The wire description of a model."""
    return pb.ModelInfo(
        name=manifest.name,
        version=manifest.version,
        n_features=manifest.n_features,
        n_outputs=manifest.n_outputs,
        state_size=manifest.state_size,
        task=manifest.task,
        labels=manifest.labels,
        feature_names=manifest.feature_names,
        output_names=manifest.output_names,
        cell=manifest.cell,
        layers=manifest.layers,
        hidden_size=manifest.hidden_size,
        return_sequences=manifest.return_sequences,
        description=manifest.description,
        provider=graph.provider,
    )


def flat(array: np.ndarray | None) -> list[float]:
    """A float32 array as the flat list a repeated float field takes."""
    if array is None:
        return []
    return np.ascontiguousarray(array, dtype=np.float32).ravel().tolist()


def end_reason(reason: EndReason) -> pb.EndReason.ValueType:
    """The wire enum value of an end reason."""
    return pb.EndReason.ValueType(reason.value)
