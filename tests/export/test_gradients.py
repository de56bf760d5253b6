"""The gradient through time, the memory horizon, clipping statistics and rebuilt artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rnnstream.cli import main
from rnnstream.export.artifact_model import load_model
from rnnstream.export.data import Series, fit_stats, time_split
from rnnstream.export.gradients import BEYOND_WINDOW, GradientFlow, gradient_flow, gradient_norms
from rnnstream.export.model import ModelConfig, SequenceModel
from rnnstream.export.onnx import write_artifact
from rnnstream.export.train import TrainConfig, train
from rnnstream.manifest import Manifest, sha256_file


def running_mean_series(rows: int = 1200, span: int = 40, seed: int = 0) -> Series:
    """White noise in, the mean of the last ``span`` inputs out: a long-memory task."""
    x = np.random.default_rng(seed).standard_normal(rows + span).astype(np.float32)
    csum = np.concatenate([[0.0], np.cumsum(x)])
    y = ((csum[span:] - csum[:-span]) / np.sqrt(span))[: rows + 1]  # y[t] over x[t..t+span)
    x_in, y_out = x[span - 1 : span - 1 + rows], y[:rows]  # y_out[t]: the span ending at x_in[t]
    return Series(
        name="running-mean",
        source="test",
        x=x_in[:, None],
        y=y_out[:, None].astype(np.float32),
        baseline=x_in[:, None].copy(),
        feature_names=["x"],
        output_names=["mean"],
        baseline_name="persistence",
        rows=rows,
        horizon=1,
        return_sequences=False,
    )


def test_curve_equals_autograd_by_hand_for_one_elman_step():
    torch.manual_seed(3)
    model = SequenceModel(ModelConfig(cell="rnn", n_features=1, hidden_size=3))
    x = np.array([[[0.3], [-1.2], [0.7]]], dtype=np.float32)  # [1, W=3, 1]
    y = np.array([[[0.0], [0.0], [0.5]]], dtype=np.float32)
    norms = gradient_norms(model, x, y)
    assert norms.shape == (4,)  # k = 0..W
    # By hand: h_t = tanh(W_ih x_t + b_ih + W_hh h_(t-1) + b_hh), y_T = W_hy h_T + b_y,
    # L_T = (y_T - target)^2, so dL/dh_T = 2 (y_T - target) W_hy and one step back
    # dL/dh_(T-1) = dL/dh_T diag(1 - h_T^2) W_hh.
    w_ih = model.rnn.weight_ih_l0.detach().double().numpy()
    w_hh = model.rnn.weight_hh_l0.detach().double().numpy()
    b = (model.rnn.bias_ih_l0 + model.rnn.bias_hh_l0).detach().double().numpy()
    w_hy = model.head.weight.detach().double().numpy()
    b_y = model.head.bias.detach().double().numpy()
    h = np.zeros(3)
    for t in range(3):
        h = np.tanh(w_ih @ x[0, t] + w_hh @ h + b)
    d_h_t = 2 * (w_hy @ h + b_y - y[0, -1]) @ w_hy  # [3]
    d_h_t1 = (d_h_t * (1 - h**2)) @ w_hh
    assert norms[0] == pytest.approx(np.linalg.norm(d_h_t), rel=1e-5)
    assert norms[1] == pytest.approx(np.linalg.norm(d_h_t1), rel=1e-5)
    assert np.all(np.diff(norms) != 0)  # a curve, not a constant


def test_elman_forgets_sooner_than_lstm_on_a_long_memory_task():
    series = running_mean_series(rows=800)
    split = time_split(len(series))
    cfg = TrainConfig(epochs=4, lr=1e-2, window=48, stride=4, seed=0, patience=0)
    horizons = {}
    for cell in ("rnn", "lstm"):
        result = train(series, split, ModelConfig(cell=cell, hidden_size=8), cfg, quiet=True)
        flow = gradient_flow(result.model, series, split, cfg.window)
        k = flow.vanished_at()
        horizons[cell] = flow.steps + 1 if k is None else k  # "beyond" counts as longer
    assert horizons["rnn"] < horizons["lstm"], horizons


def test_memory_horizon_vanishing_window_and_truncation():
    falling = np.array([1.0, 0.1, 0.01, 0.0009, 0.0001])
    assert GradientFlow(falling, windows=1).memory_horizon() == 3
    assert GradientFlow(falling, windows=1).limited_by() == "vanishing"
    flat = np.array([1.0, 0.9, 0.8, 0.7, 0.6])
    assert GradientFlow(flat, windows=1).memory_horizon() == BEYOND_WINDOW
    truncated = GradientFlow(flat, windows=1, tbptt=2)
    assert (truncated.memory_horizon(), truncated.limited_by(), truncated.reach) == (2, "tbptt", 2)
    assert "--tbptt 2" in truncated.describe()
    # The gradient vanished inside the truncation: the curve, not the truncation, sets it.
    assert GradientFlow(falling, windows=1, tbptt=4).memory_horizon() == 3
    record = GradientFlow(falling, windows=1, tbptt=2).to_dict()
    assert record["norms"] == list(falling) and record["reach"] == 2


def test_history_records_the_norm_before_clipping_and_how_often_it_bit():
    series = running_mean_series(rows=400)
    split = time_split(len(series))
    config = ModelConfig(cell="gru", hidden_size=4)
    tiny = train(series, split, config, TrainConfig(epochs=2, window=12, clip=1e-9), quiet=True)
    assert tiny.history.clipped == [1.0, 1.0]  # every step's norm is above 1e-9
    assert all(n > 0 for n in tiny.history.grad_norm)
    assert all(
        m >= n for m, n in zip(tiny.history.grad_norm_max, tiny.history.grad_norm, strict=True)
    )
    off = train(series, split, config, TrainConfig(epochs=1, window=12, clip=0), quiet=True)
    assert off.history.clipped == [0.0] and off.history.grad_norm[0] > 0
    assert set(off.history.to_dict()) >= {"grad_norm", "grad_norm_max", "clipped"}


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_a_written_model_is_rebuilt_from_its_graph(tmp_path: Path, cell: str):
    series = running_mean_series(rows=200)
    split = time_split(len(series))
    torch.manual_seed(1)
    config = ModelConfig(cell=cell, hidden_size=4, layers=2)
    model = SequenceModel(config, fit_stats(series, split))
    manifest = Manifest(
        name="m",
        version="1",
        cell=cell,
        layers=2,
        hidden_size=4,
        n_features=1,
        n_outputs=1,
        state_size=config.state_size,
        feature_names=["x"],
        output_names=["mean"],
        config={"model": config.to_dict(), "normalization": fit_stats(series, split).to_dict()},
    )
    write_artifact(model, manifest, tmp_path)
    rebuilt = load_model(tmp_path)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(rebuilt.state_dict()[name], value, rtol=0, atol=0)


def test_diagnose_adds_two_keys_and_leaves_the_graph_alone(tmp_path: Path, capsys):
    out = tmp_path / "m" / "1"
    quick = ["--data", "synthetic", "--hidden", "4", "--epochs", "1", "--window", "12"]
    quick.append("--no-classical-baseline")  # the seasonal ARIMA fit takes tens of seconds
    assert main(["train", *quick, "--quiet", "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["metrics"]["memory_horizon"], manifest["metrics"]["gradient_flow"]
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    onnx_sha = sha256_file(out / "model.onnx")
    capsys.readouterr()
    assert main(["diagnose", str(out), "--write-manifest", "--plots", str(tmp_path / "img")]) == 0
    assert "memory horizon" in capsys.readouterr().out
    after = json.loads((out / "manifest.json").read_text())
    assert sha256_file(out / "model.onnx") == onnx_sha == after["onnx_sha256"]
    added = after["metrics"].pop("memory_horizon"), after["metrics"].pop("gradient_flow")
    assert after == manifest
    assert len(added[1]["norms"]) == 13  # k = 0..12
    assert (tmp_path / "img" / "synthetic-gradients.png").stat().st_size > 1000


def test_compare_cells_plots_three_curves_and_needs_plots(tmp_path: Path, capsys):
    quick = ["--data", "synthetic", "--hidden", "4", "--epochs", "1", "--window", "12"]
    quick.append("--no-classical-baseline")  # the seasonal ARIMA fit takes tens of seconds
    assert main(["train", *quick, "--out", str(tmp_path / "a"), "--compare-cells"]) == 1
    assert "--plots" in capsys.readouterr().err
    img = tmp_path / "img"
    assert (
        main(
            ["train", *quick, "--out", str(tmp_path / "b"), "--compare-cells", "--plots", str(img)]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert all(f"{cell}: memory horizon" in out for cell in ("GRU", "RNN", "LSTM"))
    assert "grad norm before clipping: mean" in out
    assert (img / "synthetic-cells.png").stat().st_size > 1000


def test_new_flags_are_in_help(capsys):
    for argv, flags in (
        (["train", "--help"], ["--compare-cells", "memory_horizon", "gradient_flow"]),
        (["diagnose", "--help"], ["--write-manifest", "--plots", "--data"]),
    ):
        with pytest.raises(SystemExit):
            main(argv)
        text = capsys.readouterr().out
        assert all(flag in text for flag in flags), (argv, text)
