"""numpy <-> protobuf for the SDK, and the client-side input checks (no network).

Inputs are checked here before anything is sent, so a wrong shape or a NaN is a clear
``ValueError`` at the call site rather than a stream aborted by the server.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

from rnnstream.v1 import rnnstream_pb2 as pb


def _as_float32(x: ArrayLike, what: str) -> np.ndarray:
    try:
        return np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be numbers convertible to float32: {exc}") from exc


def _check_finite(x: np.ndarray, what: str) -> None:
    """Refuse NaN and infinities, naming the first bad step and feature."""
    if np.isfinite(x).all():
        return
    index = np.argwhere(~np.isfinite(x))[0]
    where = ", ".join(str(int(i)) for i in index)
    raise ValueError(
        f"{what} has a non-finite value ({x[tuple(index)]}) at index [{where}]: send finite "
        "numbers only (fill gaps in the data before sending)"
    )


def check_step(x: ArrayLike, n_features: int) -> np.ndarray:
    """One time step ``[F]`` (a scalar too when F is 1) -> ``[1, F]`` float32."""
    arr = _as_float32(x, "x")
    if arr.ndim == 0 and n_features == 1:
        arr = arr.reshape(1)
    if arr.shape != (n_features,):
        raise ValueError(
            f"step() takes one time step of shape [{n_features}] (n_features={n_features}), "
            f"got shape {list(arr.shape)}; for several steps use steps(X) with X of shape "
            f"[T, {n_features}]"
        )
    _check_finite(arr, "x")
    return arr.reshape(1, n_features)  # [1, F]


def check_steps(x: ArrayLike, n_features: int) -> np.ndarray:
    """Several time steps ``[T, F]`` (``[T]`` too when F is 1) -> ``[T, F]`` float32."""
    arr = _as_float32(x, "X")
    if arr.ndim == 1 and n_features == 1:
        arr = arr.reshape(-1, 1)
    if arr.ndim != 2 or arr.shape[1] != n_features:
        raise ValueError(
            f"steps() takes X of shape [T, {n_features}] (n_features={n_features}), got "
            f"shape {list(arr.shape)}"
        )
    if arr.shape[0] == 0:
        raise ValueError(f"X has no steps (shape {list(arr.shape)}): send at least one step")
    _check_finite(arr, "X")
    return arr


def check_sequences(x: ArrayLike, n_features: int | None) -> tuple[np.ndarray, bool]:
    """``[n, T, F]`` or ``[T, F]`` -> (``[n, T, F]`` float32, whether a batch was given)."""
    arr = _as_float32(x, "X")
    batched = arr.ndim == 3
    if arr.ndim == 2:
        arr = arr[None]  # [1, T, F]
    if arr.ndim != 3:
        raise ValueError(
            f"predict() takes X of shape [n_sequences, T, F] or [T, F], got shape {list(arr.shape)}"
        )
    if n_features is not None and arr.shape[2] != n_features:
        raise ValueError(
            f"predict() got X with {arr.shape[2]} features per step, but the model takes "
            f"n_features={n_features}: shape [n_sequences, T, {n_features}]"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"X is empty (shape {list(arr.shape)}): send at least one step")
    _check_finite(arr, "X")
    return arr, batched


def rows(values: Sequence[float], width: int) -> np.ndarray:
    """Row-major repeated floats -> ``[n, width]`` float32."""
    arr = np.asarray(values, dtype=np.float32)
    if width <= 0 or arr.size % width:
        raise ValueError(f"expected a multiple of {width} values, got {arr.size}")
    return arr.reshape(-1, width)  # [n, width]


def steps_request(start: int, x: np.ndarray) -> pb.StreamRequest:
    """``x [n, F]`` as session steps ``start..start+n-1``."""
    return pb.StreamRequest(steps=pb.Steps(start=start, x=x.reshape(-1).tolist()))


def predict_request(
    x: np.ndarray, model: str, version: str, return_sequences: bool
) -> pb.PredictRequest:
    """``x [n, T, F]`` as a PredictRequest."""
    return pb.PredictRequest(
        model=model,
        version=version,
        x=x.reshape(-1).tolist(),
        n_sequences=x.shape[0],
        return_sequences=return_sequences,
    )


def predict_result(response: pb.PredictResponse) -> np.ndarray:
    """PredictResponse -> float32 array in its ``shape``."""
    y = np.asarray(response.y, dtype=np.float32)
    return y.reshape(tuple(response.shape)) if response.shape else y
