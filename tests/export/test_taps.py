"""The delay line in the state (``--taps K``): exact taps, export parity, artifacts, the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rnnstream.cli import main
from rnnstream.export.artifact_model import load_model
from rnnstream.export.model import ModelConfig, SequenceModel
from rnnstream.export.onnx import (
    TOLERANCE,
    ort_session,
    sequence_graph_bytes,
    step_graph_bytes,
    verify,
    verify_sequence,
    write_artifact,
)
from rnnstream.manifest import (
    INPUT_STATE,
    INPUT_X,
    OUTPUT_STATE,
    OUTPUT_Y,
    Manifest,
    ManifestError,
)

K = 3
F = 2
MEAN = np.array([50.0, -3.0], np.float32)
STD = np.array([10.0, 0.5], np.float32)


def taps_model(cell: str = "gru", layers: int = 1, residual: int | None = 0) -> SequenceModel:
    """A tiny taps model with non-trivial weights and normalisation far from 0/1."""
    torch.manual_seed(3)
    config = ModelConfig(
        cell=cell, n_features=F, hidden_size=4, layers=layers, residual=residual, taps=K
    )
    model = SequenceModel(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
        model.x_mean.copy_(torch.from_numpy(MEAN))
        model.x_std.copy_(torch.from_numpy(STD))
        model.y_mean.copy_(torch.tensor([0.2]))
        model.y_std.copy_(torch.tensor([4.0]))
    return model.eval()


def raw_inputs(batch: int, steps: int, seed: int = 0) -> np.ndarray:
    """``[B, T, F]`` raw inputs around the model's statistics."""
    noise = np.random.default_rng(seed).standard_normal((batch, steps, F)).astype(np.float32)
    return noise * STD + MEAN


def test_taps_zero_is_exactly_the_plain_model():
    plain = ModelConfig(cell="gru", n_features=F, hidden_size=4)
    assert plain.taps == 0 and plain.state_size == 4 and plain.cell_input_size == F
    model = SequenceModel(plain)
    assert model.taps_head is None
    assert set(model.state_dict()) == {
        "rnn.weight_ih_l0",
        "rnn.weight_hh_l0",
        "rnn.bias_ih_l0",
        "rnn.bias_hh_l0",
        "head.weight",
        "head.bias",
        "x_mean",
        "x_std",
        "y_mean",
        "y_std",
    }


@pytest.mark.parametrize(("cell", "layers"), [("gru", 1), ("lstm", 2)])
def test_the_state_row_is_the_cell_state_then_k_taps(cell: str, layers: int):
    model = taps_model(cell, layers)
    cell_part = (2 if cell == "lstm" else 1) * layers * 4
    assert model.config.cell_state_size == cell_part
    assert model.state_size == cell_part + K * F
    assert model.rnn.input_size == (K + 1) * F  # x_t and the K inputs before it
    assert model.taps_head is not None and model.taps_head.in_features == (K + 1) * F


@pytest.mark.parametrize(("cell", "layers"), [("gru", 1), ("lstm", 2)])
def test_step_graph_equals_torch_step_by_step_and_the_taps_are_the_last_k_inputs(
    cell: str, layers: int
):
    model = taps_model(cell, layers)
    session = ort_session(step_graph_bytes(model))
    batch, steps = 3, 9
    x = raw_inputs(batch, steps)
    z = (x - MEAN) / STD  # [B, T, F] what the delay line must hold, exactly
    start = model.config.cell_state_size
    state_onnx = np.zeros((batch, model.state_size), np.float32)
    state_torch = model.zero_state(batch)
    for t in range(steps):
        y_onnx, state_onnx = session.run(
            [OUTPUT_Y, OUTPUT_STATE], {INPUT_X: x[:, t], INPUT_STATE: state_onnx}
        )
        with torch.no_grad():
            y_torch, state_torch = model(torch.from_numpy(x[:, t : t + 1]), state_torch)
        np.testing.assert_allclose(y_onnx, y_torch[:, 0].numpy(), rtol=0, atol=1e-5 * 4.0)
        np.testing.assert_allclose(state_onnx, state_torch.numpy(), rtol=0, atol=TOLERANCE)
        # Oldest first, the newest is this step's input; before K steps, zeros on the left.
        expected = np.zeros((batch, K, F), np.float32)
        seen = z[:, max(0, t + 1 - K) : t + 1]
        expected[:, K - seen.shape[1] :] = seen
        np.testing.assert_array_equal(state_onnx[:, start:], expected.reshape(batch, K * F))
        np.testing.assert_array_equal(state_torch[:, start:].numpy(), state_onnx[:, start:])


def test_a_chunk_shifts_the_incoming_taps_along():
    model = taps_model()
    start = model.config.cell_state_size
    state = torch.zeros(1, model.state_size)
    state[0, start:] = torch.arange(1.0, K * F + 1)  # taps [1 2 | 3 4 | 5 6], oldest first
    x = raw_inputs(1, 2)
    with torch.no_grad():
        _, out = model(torch.from_numpy(x), state)
    z = torch.from_numpy((x - MEAN) / STD)[0]
    torch.testing.assert_close(out[0, start:], torch.cat([torch.tensor([5.0, 6.0]), z[0], z[1]]))


def test_the_head_adds_a_linear_autoregression_over_the_window():
    model = taps_model(residual=None)
    x = raw_inputs(2, 6)
    with torch.no_grad():
        y, _, hidden = model.forward_normalized(torch.from_numpy(x))
        assert model.taps_head is not None
        ar = model.taps_head.weight  # [O, (K+1)*F]
        z = torch.from_numpy((x - MEAN) / STD)
        padded = torch.cat([torch.zeros(2, K, F), z], dim=1)  # the zero state's taps first
        t = 5
        window = padded[:, t : t + K + 1].reshape(2, -1)  # z_{t-K} .. z_t
        expected = model.head(hidden[:, t]) + window @ ar.T
    torch.testing.assert_close(y[:, t], expected)


@pytest.mark.parametrize(("cell", "layers"), [("gru", 1), ("lstm", 2)])
def test_export_parity_holds_with_taps(cell: str, layers: int):
    model = taps_model(cell, layers)
    assert verify(model, step_graph_bytes(model), batch=4, steps=50).worst <= TOLERANCE
    assert verify_sequence(model, sequence_graph_bytes(model)).worst <= TOLERANCE


def test_readout_reads_the_taps_the_row_holds():
    model = taps_model()
    state = torch.randn(2, model.state_size)
    taps = state[:, model.config.cell_state_size :].clone()
    with torch.no_grad():
        base = model.readout(state)
        state[:, model.config.cell_state_size :] = 0
        assert model.taps_head is not None
        expected = base - taps @ model.taps_head.weight[:, F:].T
        torch.testing.assert_close(model.readout(state), expected)


def taps_manifest(model: SequenceModel) -> Manifest:
    config = model.config
    return Manifest(
        name="m",
        version="1",
        cell=config.cell,
        layers=config.layers,
        hidden_size=config.hidden_size,
        n_features=F,
        n_outputs=1,
        state_size=config.state_size,
        feature_names=["a", "b"],
        output_names=["y"],
        taps=K,
        config={
            "model": config.to_dict(),
            "normalization": {
                "x_mean": MEAN.tolist(),
                "x_std": STD.tolist(),
                "y_mean": [0.2],
                "y_std": [4.0],
            },
        },
    )


def test_a_written_taps_model_is_rebuilt_from_its_graph(tmp_path: Path):
    model = taps_model()
    write_artifact(model, taps_manifest(model), tmp_path)
    assert Manifest.load(tmp_path).taps == K
    rebuilt = load_model(tmp_path)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(rebuilt.state_dict()[name], value, rtol=0, atol=0)


def test_the_manifest_counts_the_taps_in_the_state_size():
    model = taps_model()
    manifest = taps_manifest(model)
    assert manifest.to_dict()["taps"] == K
    with pytest.raises(ManifestError, match="state_size"):
        Manifest.from_dict(manifest.to_dict() | {"taps": 0})
    # No taps: the key stays out, so manifests without it read as before.
    plain = Manifest.from_dict(manifest.to_dict() | {"taps": 0, "state_size": 4})
    assert "taps" not in plain.to_dict()


def test_train_with_taps_writes_a_model_whose_state_holds_them(tmp_path: Path):
    out = tmp_path / "m" / "1"
    quick = ["--data", "synthetic", "--hidden", "4", "--epochs", "1", "--window", "12"]
    quick += ["--no-classical-baseline", "--quiet", "--residual", "--taps", "5"]
    assert main(["train", *quick, "--out", str(out)]) == 0
    manifest = Manifest.load(out)
    assert (manifest.taps, manifest.n_features, manifest.state_size) == (5, 2, 4 + 5 * 2)
    assert manifest.config["model"]["taps"] == 5
    assert "slots 4..13: the taps" in manifest.description
    assert " --taps 5 " in manifest.command
    assert load_model(out).config.taps == 5
    assert main(["train", *quick[:-2], "--taps", "-1", "--out", str(tmp_path / "bad")]) == 1


def test_the_step_graph_does_not_grow_with_the_delay_line():
    """One step reads the window as one reshape of the history, not K + 1 slices."""
    import onnx

    def step_nodes(taps: int) -> int:
        config = ModelConfig(cell="gru", n_features=F, hidden_size=4, residual=0, taps=taps)
        return len(onnx.load_from_string(step_graph_bytes(SequenceModel(config))).graph.node)

    assert step_nodes(5) == step_nodes(40)
    # The sequence graph still slices (T is dynamic there), and still matches torch.
    model = taps_model()
    assert verify_sequence(model, sequence_graph_bytes(model)).worst <= TOLERANCE
