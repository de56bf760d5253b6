"""Load results the harness makes itself: a failed run's, and one run's clients' combined."""

from __future__ import annotations

import math
from collections.abc import Sequence

from rnnstream import loadgen

_LATENCY_KEYS = ("p50", "p90", "p99", "mean", "max")


def failed(spec: loadgen.LoadSpec, message: str) -> loadgen.LoadResult:
    """A run that produced nothing: every stream counts as an error, with ``message``."""
    nan = float("nan")
    return loadgen.LoadResult(
        label=spec.label,
        target=spec.target,
        streams=spec.streams,
        window=spec.window,
        steps_per_message=spec.steps_per_message,
        channels=spec.n_channels,
        elapsed_s=0.0,
        messages=0,
        timesteps=0,
        errors=spec.streams,
        error_messages=[message],
        msg_per_s=0.0,
        timesteps_per_s=0.0,
        latency_us=dict.fromkeys(_LATENCY_KEYS, nan),
        server_cpu_us_per_msg=None,
        client_cpu_us_per_msg=None,
        n_features=0,
        n_outputs=0,
    )


def combine(parts: Sequence[loadgen.LoadResult]) -> loadgen.LoadResult:
    """One run measured by several client processes over the same window, as one result.

    Rates add up (each client's messages over its own window, the windows started
    together); CPU per message is total CPU over total messages, where each client saw
    all of the server's CPU in the shared window (so the server's is their mean, not their
    sum). Latency percentiles are the clients' weighted by messages (the max is the max):
    exact when their distributions match, as they do for clients that carry equal shares
    of streams to the same server; each client's own rate stays in ``extra``.
    """
    if not parts:
        raise ValueError("no client results to combine")
    first = parts[0]
    messages = sum(p.messages for p in parts)
    return loadgen.LoadResult(
        label=first.label,
        target=first.target,
        streams=sum(p.streams for p in parts),
        window=first.window,
        steps_per_message=first.steps_per_message,
        channels=sum(p.channels for p in parts),
        elapsed_s=max(p.elapsed_s for p in parts),
        messages=messages,
        timesteps=sum(p.timesteps for p in parts),
        errors=sum(p.errors for p in parts),
        error_messages=[m for p in parts for m in p.error_messages][: loadgen.MAX_ERRORS_KEPT],
        msg_per_s=sum(p.msg_per_s for p in parts),
        timesteps_per_s=sum(p.timesteps_per_s for p in parts),
        latency_us=_latency(parts),
        server_cpu_us_per_msg=_server_cpu(parts, messages),
        client_cpu_us_per_msg=_client_cpu(parts, messages),
        n_features=max(p.n_features for p in parts),
        n_outputs=max(p.n_outputs for p in parts),
        extra={
            "clients": len(parts),
            "client_streams": [p.streams for p in parts],
            "client_msg_per_s": [p.msg_per_s for p in parts],
        },
    )


def _latency(parts: Sequence[loadgen.LoadResult]) -> dict[str, float]:
    measured = [p for p in parts if p.messages > 0]
    total = sum(p.messages for p in measured)
    if not total:
        return dict.fromkeys(_LATENCY_KEYS, math.nan)
    latency = {
        key: sum(p.latency_us[key] * p.messages for p in measured) / total
        for key in _LATENCY_KEYS
        if key != "max"
    }
    latency["max"] = max(p.latency_us["max"] for p in measured)
    return latency


def _server_cpu(parts: Sequence[loadgen.LoadResult], messages: int) -> float | None:
    # Each client's figure is the server's CPU in the shared window over its own messages.
    seen = [cpu * p.messages for p in parts if (cpu := _known(p.server_cpu_us_per_msg)) is not None]
    if not seen or not messages:
        return None
    return sum(seen) / len(seen) / messages


def _client_cpu(parts: Sequence[loadgen.LoadResult], messages: int) -> float | None:
    measured = [p for p in parts if p.messages]
    spent = [
        cpu * p.messages for p in measured if (cpu := _known(p.client_cpu_us_per_msg)) is not None
    ]
    if not messages or len(spent) < len(measured):
        return None
    return sum(spent) / messages


def _known(value: float | None) -> float | None:
    """``value`` when it is a number (not None, NaN or infinite); else None."""
    return value if value is not None and math.isfinite(value) else None
