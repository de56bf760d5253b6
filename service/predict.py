"""Predict: whole sequences at once, from the initial state, with no session kept.

The sequences go through the same engine (and batches) as streaming sessions, carrying
their own private state instead of table rows, split into chunks of at most ``max_batch``.
"""

from __future__ import annotations

import asyncio

import numpy as np

from rnnstream.server.engine import StepResult
from rnnstream.server.repository import LoadedModel


async def predict(model: LoadedModel, x: np.ndarray, return_sequences: bool) -> np.ndarray:
    """``x [n, T, F]`` -> ``y [n, T, O]`` (return_sequences) or ``y [n, O]`` (last step)."""
    engine = model.engine
    chunk = engine.max_batch
    submitted = [
        engine.submit(
            x[i : i + chunk],
            state=np.broadcast_to(
                model.initial_state, (len(x[i : i + chunk]), model.table.state_size)
            ),
        )
        for i in range(0, len(x), chunk)
    ]
    # Every chunk is submitted before any is awaited: they run (and batch) together.
    await asyncio.gather(*(ran for ran in submitted if not isinstance(ran, StepResult)))
    results = [ran if isinstance(ran, StepResult) else ran.result() for ran in submitted]
    y = np.concatenate([r.y for r in results])  # [n, T, O]
    return y if return_sequences else y[:, -1]  # [n, O]
