"""A tiny Elman RNN step graph written with onnx.helper, and its numpy reference.

``h_t = tanh(W_xh x_t + W_hh h_{t-1} + b_h)``, ``y_t = W_hy h_t + b_y``: the graph the
service tests serve, built in milliseconds without torch, with a reference to compare to.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from rnnstream.manifest import Manifest, sha256_file


@dataclass
class TinyRnn:
    """Weights of a one-layer Elman RNN with a linear head."""

    w_xh: np.ndarray  # [H, F]
    w_hh: np.ndarray  # [H, H]
    b_h: np.ndarray  # [H]
    w_hy: np.ndarray  # [O, H]
    b_y: np.ndarray  # [O]

    @classmethod
    def random(cls, n_features: int, hidden: int, n_outputs: int, seed: int) -> TinyRnn:
        rng = np.random.default_rng(seed)

        def w(*shape: int) -> np.ndarray:
            return (rng.standard_normal(shape) * 0.5).astype(np.float32)

        return cls(
            w(hidden, n_features), w(hidden, hidden), w(hidden), w(n_outputs, hidden), w(n_outputs)
        )

    def run(self, x: np.ndarray, state: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Reference: x [B, T, F] -> y [B, T, O], states [B, T, H] (float64 maths)."""
        b, t, _ = x.shape
        h = np.zeros((b, len(self.b_h))) if state is None else state.astype(np.float64)
        ys, hs = [], []
        for i in range(t):
            h = np.tanh(x[:, i] @ self.w_xh.T + h @ self.w_hh.T + self.b_h)
            ys.append(h @ self.w_hy.T + self.b_y)
            hs.append(h)
        return np.stack(ys, 1), np.stack(hs, 1)

    def graph(self) -> onnx.ModelProto:
        """The step graph: x [B, F], state [B, H] -> y [B, O], state_out [B, H]."""
        f, h, o = self.w_xh.shape[1], len(self.b_h), len(self.b_y)
        inits = [
            numpy_helper.from_array(self.w_xh.T.copy(), "w_xh_t"),
            numpy_helper.from_array(self.w_hh.T.copy(), "w_hh_t"),
            numpy_helper.from_array(self.b_h, "b_h"),
            numpy_helper.from_array(self.w_hy.T.copy(), "w_hy_t"),
            numpy_helper.from_array(self.b_y, "b_y"),
        ]
        nodes = [
            helper.make_node("MatMul", ["x", "w_xh_t"], ["xw"]),
            helper.make_node("MatMul", ["state", "w_hh_t"], ["hw"]),
            helper.make_node("Add", ["xw", "hw"], ["s1"]),
            helper.make_node("Add", ["s1", "b_h"], ["s2"]),
            helper.make_node("Tanh", ["s2"], ["state_out"]),
            helper.make_node("MatMul", ["state_out", "w_hy_t"], ["yw"]),
            helper.make_node("Add", ["yw", "b_y"], ["y"]),
        ]
        graph = helper.make_graph(
            nodes,
            "tiny_rnn_step",
            [
                helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", f]),
                helper.make_tensor_value_info("state", TensorProto.FLOAT, ["B", h]),
            ],
            [
                helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", o]),
                helper.make_tensor_value_info("state_out", TensorProto.FLOAT, ["B", h]),
            ],
            inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        return model

    def write(
        self, directory: Path, name: str, version: str, return_sequences: bool = True
    ) -> Manifest:
        """Write model.onnx and manifest.json into ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        onnx.save(self.graph(), directory / "model.onnx")
        f, h, o = self.w_xh.shape[1], len(self.b_h), len(self.b_y)
        manifest = Manifest(
            name=name,
            version=version,
            cell="rnn",
            layers=1,
            hidden_size=h,
            n_features=f,
            n_outputs=o,
            state_size=h,
            feature_names=[f"f{i}" for i in range(f)],
            output_names=[f"y{i}" for i in range(o)],
            return_sequences=return_sequences,
            description="tiny test model",
            onnx_sha256=sha256_file(directory / "model.onnx"),
        )
        manifest.save(directory)
        return manifest
