"""The exported step graph, stepped T times in onnxruntime, equals torch on the sequence."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
import torch

from rnnstream.export.model import ModelConfig, SequenceModel
from rnnstream.export.onnx import (
    TOLERANCE,
    ParityError,
    SequenceGraphModule,
    _export,
    sequence_graph_bytes,
    step_graph_bytes,
    verify,
    verify_sequence,
)

CASES = list(itertools.product(("rnn", "gru", "lstm"), (1, 2)))
_cache: dict[tuple[str, int], tuple[SequenceModel, bytes]] = {}


def exported(cell: str, layers: int) -> tuple[SequenceModel, bytes]:
    """One export per (cell, layers), shared by the batch/length cases."""
    if (cell, layers) not in _cache:
        torch.manual_seed(layers)
        model = SequenceModel(
            ModelConfig(cell=cell, n_features=3, n_outputs=2, hidden_size=12, layers=layers)
        )
        with torch.no_grad():  # raw units far from 0/1, so normalisation matters
            model.x_mean.copy_(torch.tensor([50.0, -3.0, 0.01]))
            model.x_std.copy_(torch.tensor([10.0, 0.5, 0.002]))
            model.y_mean.copy_(torch.tensor([20.0, 1000.0]))
            model.y_std.copy_(torch.tensor([4.0, 300.0]))
        _cache[(cell, layers)] = (model.eval(), step_graph_bytes(model))
    return _cache[(cell, layers)]


@pytest.mark.parametrize("steps", [3, 200])
@pytest.mark.parametrize("batch", [1, 37])
@pytest.mark.parametrize(("cell", "layers"), CASES)
def test_parity_matrix(cell: str, layers: int, batch: int, steps: int):
    model, graph = exported(cell, layers)
    parity = verify(model, graph, batch=batch, steps=steps, seed=batch * 1000 + steps)
    assert parity.batch == batch and parity.steps == steps
    assert parity.y <= TOLERANCE, parity
    assert parity.state <= TOLERANCE, parity


@pytest.mark.parametrize(("cell", "layers"), CASES)
def test_graph_uses_the_native_recurrent_op_and_dynamic_batch(cell: str, layers: int):
    _, graph = exported(cell, layers)
    proto = onnx.load_from_string(graph)
    ops = [node.op_type for node in proto.graph.node]
    assert ops.count(cell.upper()) == layers
    assert proto.opset_import[0].version == 17
    for value in [*proto.graph.input, *proto.graph.output]:
        assert value.type.tensor_type.shape.dim[0].dim_param == "B"


def test_verify_on_given_inputs():
    model, graph = exported("gru", 1)
    inputs = np.random.default_rng(0).normal(50, 10, size=(2, 11, 3)).astype(np.float32)
    parity = verify(model, graph, inputs=inputs)
    assert (parity.batch, parity.steps) == (2, 11)
    assert parity.worst <= TOLERANCE


@pytest.mark.parametrize(("cell", "layers"), CASES)
def test_sequence_graph_parity_at_lengths_other_than_the_example(cell: str, layers: int):
    model, _ = exported(cell, layers)
    parity = verify_sequence(model, sequence_graph_bytes(model), lengths=(1, 7, 200))
    assert parity.worst <= TOLERANCE, parity


def test_a_sequence_graph_fixed_to_its_example_length_is_refused():
    model, _ = exported("gru", 1)
    example = (torch.zeros(2, 4, 3), model.zero_state(2))
    fixed = _export(SequenceGraphModule(model).eval(), example, time_axis=False)  # T stays 4
    with pytest.raises(ParityError, match="T=5"):
        verify_sequence(model, fixed, lengths=(5,))
