"""The torch model: state packing, normalisation inside, config validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rnnstream.export.data import Stats
from rnnstream.export.model import ModelConfig, SequenceModel


@pytest.mark.parametrize(
    ("cell", "layers", "size"), [("rnn", 1, 8), ("gru", 3, 24), ("lstm", 2, 32)]
)
def test_state_layout_round_trips(cell: str, layers: int, size: int):
    model = SequenceModel(ModelConfig(cell=cell, hidden_size=8, layers=layers))
    assert model.state_size == size
    state = torch.arange(3 * size, dtype=torch.float32).reshape(3, size)
    unpacked = model.unpack_state(state)
    if cell == "lstm":
        assert isinstance(unpacked, tuple)
        h, c = unpacked
        assert h.shape == c.shape == (layers, 3, 8)
        torch.testing.assert_close(h[1, 2], state[2, 8:16])  # h of layer 1, then c blocks
        torch.testing.assert_close(c[0, 2], state[2, 16:24])
    else:
        assert isinstance(unpacked, torch.Tensor)
        assert unpacked.shape == (layers, 3, 8)
    torch.testing.assert_close(model.pack_state(unpacked), state)


def test_raw_units_in_and_out():
    stats = Stats(
        x_mean=np.array([50.0], np.float32),
        x_std=np.array([10.0], np.float32),
        y_mean=np.array([52.0], np.float32),
        y_std=np.array([8.0], np.float32),
    )
    model = SequenceModel(ModelConfig(cell="gru"), stats)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.fill_(0.5)
        y, state = model(torch.full((2, 5, 1), 60.0))
    torch.testing.assert_close(y, torch.full((2, 5, 1), 52.0 + 0.5 * 8.0))
    assert state.shape == (2, 32)
    assert "x_mean" in model.state_dict()  # buffers travel with the weights


def test_a_residual_model_outputs_the_reading_plus_the_change(tmp_path):
    """``residual = 0``: the head predicts the change from input 0; the graph adds it back."""
    from rnnstream.export.onnx import step_graph_bytes, verify

    stats = Stats(
        x_mean=np.array([50.0, 1.0], np.float32),
        x_std=np.array([10.0, 2.0], np.float32),
        y_mean=np.array([0.1], np.float32),  # of the change y - x[0]
        y_std=np.array([0.5], np.float32),
    )
    model = SequenceModel(ModelConfig(cell="gru", n_features=2, hidden_size=4, residual=0), stats)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.fill_(2.0)
        x = torch.tensor([[[60.0, 3.0], [61.5, -1.0]]])  # [1, 2, 2]
        y, _ = model(x)
    torch.testing.assert_close(y, x[..., :1] + 0.1 + 2.0 * 0.5)
    torch.testing.assert_close(model.normalize_y(y, x), torch.full((1, 2, 1), 2.0))
    assert verify(model.eval(), step_graph_bytes(model)).worst <= 1e-5
    with pytest.raises(ValueError, match="residual"):
        ModelConfig(n_features=1, residual=1)


def test_sequence_equals_steps_in_torch():
    torch.manual_seed(0)
    model = SequenceModel(
        ModelConfig(cell="lstm", n_features=2, n_outputs=3, hidden_size=5, layers=2)
    )
    x = torch.randn(4, 7, 2)
    with torch.no_grad():
        y_seq, s_seq = model(x)
        state = model.zero_state(4)
        steps = []
        for t in range(7):
            y_t, state = model(x[:, t : t + 1], state)
            steps.append(y_t)
    torch.testing.assert_close(torch.cat(steps, dim=1), y_seq)
    torch.testing.assert_close(state, s_seq)


def test_config_is_validated():
    with pytest.raises(ValueError, match="cell"):
        ModelConfig(cell="transformer")
    with pytest.raises(ValueError, match="hidden_size"):
        ModelConfig(hidden_size=0)
