"""The torch network back out of a written artifact: ``model.onnx`` + ``manifest.json``.

The step graph holds every weight as an initializer of its ``RNN``/``GRU``/``LSTM`` nodes
(one per layer, in order) and of the head's ``MatMul``/``Add`` (with taps, a second
``MatMul``: the autoregression over the delay line); the manifest holds the
config and the normalisation statistics. ONNX orders the gates differently from torch
(GRU ``z, r, h`` vs ``r, z, n``; LSTM ``i, o, f, c`` vs ``i, f, g, o``), so they are
reordered here. The rebuilt model is checked against the graph with the exporter's own
parity test before it is returned, so a wrong mapping cannot pass silently.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from rnnstream.export.data import Stats
from rnnstream.export.model import ModelConfig, SequenceModel
from rnnstream.export.onnx import TOLERANCE, ParityError, verify
from rnnstream.manifest import Manifest

# For each cell, the torch gate order as indices into ONNX's gate blocks.
GATES_FROM_ONNX: dict[str, list[int]] = {
    "rnn": [0],
    "gru": [1, 0, 2],  # onnx z, r, h -> torch r, z, n
    "lstm": [0, 2, 3, 1],  # onnx i, o, f, c -> torch i, f, g, o
}
RECURRENT_OPS = {"rnn": "RNN", "gru": "GRU", "lstm": "LSTM"}


def _reorder(weight: np.ndarray, cell: str, hidden: int) -> np.ndarray:
    """Rows of ONNX gate blocks (each ``hidden`` tall) -> torch's order."""
    blocks = [weight[g * hidden : (g + 1) * hidden] for g in GATES_FROM_ONNX[cell]]
    return np.concatenate(blocks, axis=0)


def load_model(directory: Path) -> SequenceModel:
    """The :class:`SequenceModel` whose step graph is ``directory/model.onnx``, verified.

    Raises :class:`ParityError` if the rebuilt network does not reproduce the graph.
    """
    manifest = Manifest.load(directory)
    config = ModelConfig(**manifest.config["model"])
    norm = manifest.config["normalization"]
    stats = Stats(**{k: np.asarray(v, dtype=np.float32) for k, v in norm.items()})
    model = SequenceModel(config, stats)
    onnx_bytes = (directory / manifest.onnx_file).read_bytes()
    graph = onnx.load_from_string(onnx_bytes).graph
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    layers = [n for n in graph.node if n.op_type == RECURRENT_OPS[config.cell]]
    matmuls = [n for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    heads = 2 if config.taps else 1  # the head on h, then the taps' autoregression
    if len(layers) != config.layers or len(matmuls) != heads:
        raise ParityError(
            f"{directory}: expected {config.layers} {RECURRENT_OPS[config.cell]} node(s) and "
            f"{heads} head MatMul(s), found {len(layers)} and {len(matmuls)}"
        )
    h = config.hidden_size
    state = model.state_dict()
    for i, node in enumerate(layers):
        w, r, b = (weights[name][0] for name in node.input[1:4])  # [G*H, in], [G*H, H], [2*G*H]
        state[f"rnn.weight_ih_l{i}"] = torch.from_numpy(_reorder(w, config.cell, h))
        state[f"rnn.weight_hh_l{i}"] = torch.from_numpy(_reorder(r, config.cell, h))
        half = len(b) // 2
        state[f"rnn.bias_ih_l{i}"] = torch.from_numpy(_reorder(b[:half], config.cell, h))
        state[f"rnn.bias_hh_l{i}"] = torch.from_numpy(_reorder(b[half:], config.cell, h))
    state["head.weight"] = torch.from_numpy(weights[matmuls[0].input[1]].T.copy())  # [O, H]
    state["head.bias"] = torch.from_numpy(weights["model.head.bias"].copy())
    if config.taps:
        state["taps_head.weight"] = torch.from_numpy(weights[matmuls[1].input[1]].T.copy())
    model.load_state_dict(state)
    model.eval()
    parity = verify(model, onnx_bytes)
    if not parity.worst <= TOLERANCE:
        raise ParityError(
            f"{directory}: the network rebuilt from model.onnx differs from the graph by "
            f"{parity.worst:.3g} > {TOLERANCE:g}"
        )
    return model
