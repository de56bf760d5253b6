"""TorchServe handler: the bench GRU's step graph in onnxruntime, state per sequence id.

Packed into the model archive by serve.py. TorchServe's sequence batching hands
``handle`` one request from each of several sequences; requests with the same number of
steps ``k`` are batched (one ``run()`` per time step for all of them). Input: raw float32
bytes of ``x [k, F]`` under "data"; output: raw float32 bytes of ``y [k, O]``.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import onnxruntime as ort


class GruHandler:
    """Stateful step-graph handler (no torch model: the same model.onnx every system serves)."""

    def __init__(self) -> None:
        self.session: Any = None
        self.states: dict[str, np.ndarray] = {}
        self.initialized = False

    def initialize(self, context: Any) -> None:
        """Load model.onnx and manifest.json from the archive."""
        model_dir = context.system_properties.get("model_dir")
        with open(os.path.join(model_dir, "manifest.json")) as f:
            manifest = json.load(f)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            os.path.join(model_dir, "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        self.n_features = int(manifest["n_features"])
        self.state_size = int(manifest["state_size"])
        self.initialized = True

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[bytes]:
        """One reply (bytes) per request of the batch."""
        replies = [b""] * len(data)
        groups: dict[int, list[tuple[int, str, np.ndarray]]] = {}
        for idx, row in enumerate(data):
            sequence_id = context.get_sequence_id(idx)
            raw = row.get("data") or row.get("body") or b""
            x = np.frombuffer(bytes(raw), dtype=np.float32).reshape(-1, self.n_features)
            if sequence_id not in self.states:
                self.states[sequence_id] = np.zeros((1, self.state_size), dtype=np.float32)
            groups.setdefault(len(x), []).append((idx, sequence_id, x))
        for k, members in groups.items():
            xs = np.stack([m[2] for m in members])  # [B, k, F]
            state = np.concatenate([self.states[m[1]] for m in members])  # [B, S]
            ys = []
            for t in range(k):
                y, state = self.session.run(None, {"x": xs[:, t], "state": state})
                ys.append(y)
            y_all = np.stack(ys, axis=1)  # [B, k, O]
            for j, (idx, sequence_id, _) in enumerate(members):
                self.states[sequence_id] = state[j : j + 1]
                replies[idx] = y_all[j].tobytes()
        return replies
