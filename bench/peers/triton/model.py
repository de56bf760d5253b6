"""Triton Python-backend model: the bench GRU's step graph in onnxruntime, state per sequence.

Copied into the Triton model repository by ``bench/peers/triton/setup.sh`` (as
``<repo>/<name>/1/model.py``). The sequence batcher (``oldest`` strategy) hands
``execute`` requests from many sequences at once; each carries its correlation id and
START/END flags as control inputs. Requests with the same number of steps ``k`` are
batched: one ``run()`` per time step for all of them, like rnnstream's engine. State
lives in a dict keyed by correlation id.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

# The stub process does not see the peer venv: serve.py leaves its site-packages path here.
_HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(_HERE, "site_packages.txt")) as _f:
    sys.path.insert(0, _f.read().strip())

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]  # noqa: E402


class TritonPythonModel:
    """The bench model, stepped per sequence."""

    def initialize(self, args: dict[str, Any]) -> None:
        """Load the step graph next to this file."""
        here = _HERE
        with open(os.path.join(here, "manifest.json")) as f:
            manifest = json.load(f)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            os.path.join(here, "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        self.state_size = int(manifest["state_size"])
        self.states: dict[int, np.ndarray] = {}

    def execute(self, requests: list[Any]) -> list[Any]:
        """One response per request; sequences with the same k run batched."""
        responses: list[Any] = [None] * len(requests)
        groups: dict[int, list[tuple[int, int, np.ndarray, bool]]] = {}
        for i, request in enumerate(requests):
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()  # [1, k, F]
            corrid = int(pb_utils.get_input_tensor_by_name(request, "CORRID").as_numpy()[0][0])
            start = pb_utils.get_input_tensor_by_name(request, "START").as_numpy()[0][0]
            end = pb_utils.get_input_tensor_by_name(request, "END").as_numpy()[0][0]
            if start or corrid not in self.states:
                self.states[corrid] = np.zeros((1, self.state_size), dtype=np.float32)
            groups.setdefault(x.shape[1], []).append((i, corrid, x[0], bool(end)))
        for k, members in groups.items():
            xs = np.stack([m[2] for m in members])  # [B, k, F]
            state = np.concatenate([self.states[m[1]] for m in members])  # [B, S]
            ys = []
            for t in range(k):
                y, state = self.session.run(None, {"x": xs[:, t], "state": state})
                ys.append(y)
            y_all = np.stack(ys, axis=1)  # [B, k, O]
            for j, (i, corrid, _, end) in enumerate(members):
                if end:
                    self.states.pop(corrid, None)
                else:
                    self.states[corrid] = state[j : j + 1]
                out = pb_utils.Tensor("y", y_all[j : j + 1])  # [1, k, O]
                responses[i] = pb_utils.InferenceResponse(output_tensors=[out])
        return responses

    def finalize(self) -> None:
        """Drop every state."""
        self.states.clear()
