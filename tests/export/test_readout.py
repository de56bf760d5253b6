"""The closed-form readout (``--solve-readout``) and scoring streamed from the series' start."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rnnstream.cli import main
from rnnstream.export import readout
from rnnstream.export.data import Series, Split, load_synthetic, time_split
from rnnstream.export.model import ModelConfig, SequenceModel
from rnnstream.export.train import TrainConfig, normalized_mse, predict, train
from rnnstream.manifest import Manifest


@pytest.fixture(scope="module")
def synthetic() -> tuple[Series, Split]:
    series = load_synthetic(rows=600)
    return series, time_split(len(series))


def trained(series: Series, split: Split, taps: int = 3) -> SequenceModel:
    config = ModelConfig(
        cell="gru", n_features=2, n_outputs=1, hidden_size=6, residual=0, taps=taps
    )
    return train(series, split, config, TrainConfig(epochs=1, window=24, seed=3)).model


def snapshot(model: SequenceModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_solve_recovers_an_exact_linear_map():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(400, 5))
    coef = rng.normal(size=(5, 2))
    targets = features @ coef + np.array([0.5, -1.0])
    solved = readout.solve(features, targets, penalty=0.0)
    np.testing.assert_allclose(solved[:5], coef, atol=1e-9)
    np.testing.assert_allclose(solved[-1], [0.5, -1.0], atol=1e-9)
    # The penalty shrinks the weights, never the bias's job of matching the mean.
    shrunk = readout.solve(features, targets, penalty=10.0)
    assert np.abs(shrunk[:5]).sum() < np.abs(coef).sum()


def test_readout_inputs_are_what_the_head_reads(synthetic):
    series, split = synthetic
    model = trained(series, split)
    x = series.x[:50]
    columns = readout.readout_inputs(model, x)  # [T, H + (K+1)F]
    assert columns.shape == (50, 6 + 4 * 2)
    # The head applied to those columns is the network's normalised output.
    head = np.concatenate(
        [model.head.weight.detach().numpy(), model.taps_head.weight.detach().numpy()], axis=1
    )
    by_hand = columns @ head.T.astype(np.float64) + model.head.bias.detach().numpy()
    with torch.no_grad():
        y, _, _ = model.forward_normalized(torch.from_numpy(x).unsqueeze(0))
    np.testing.assert_allclose(by_hand, y[0].numpy(), atol=1e-5)


@pytest.mark.parametrize("taps", [0, 3])
def test_solving_lowers_the_validation_error_and_is_recorded(synthetic, taps):
    series, split = synthetic
    model = trained(series, split, taps)
    before = normalized_mse(model, predict(model, series, split.val, 24, from_start=True))
    fit = readout.solve_readout(model, series, split, 24, level_shift=0.5)
    after = normalized_mse(model, predict(model, series, split.val, 24, from_start=True))
    assert fit.applied and fit.penalty in readout.PENALTIES
    assert fit.val_mse_trained == pytest.approx(before, rel=1e-5)
    assert fit.val_mse_solved == pytest.approx(after, rel=1e-4)
    assert after < before
    # Five copies of the training part (the level shifts), the first K rows of each left out.
    a, b = split.train
    assert fit.rows == 5 * (b - a - taps)
    assert fit.columns == 6 + (taps + 1) * 2 * bool(taps)


def test_a_solution_no_better_on_validation_leaves_the_model_as_it_was(synthetic, monkeypatch):
    series, split = synthetic
    model = trained(series, split)
    readout.solve_readout(model, series, split, 24)  # the best readout there is
    kept = snapshot(model)
    monkeypatch.setattr(readout, "PENALTIES", (1e3,))  # shrinks every weight to ~0
    fit = readout.solve_readout(model, series, split, 24)
    assert not fit.applied and fit.val_mse_solved > fit.val_mse_trained
    for key, value in snapshot(model).items():
        assert torch.equal(value, kept[key]), key


def test_streaming_from_the_start_scores_the_same_rows_with_the_history_in_the_state(synthetic):
    series, split = synthetic
    model = trained(series, split)
    cold = predict(model, series, split.test, 24)
    warm = predict(model, series, split.test, 24, from_start=True)
    np.testing.assert_array_equal(cold.rows, warm.rows)
    np.testing.assert_array_equal(cold.truth, warm.truth)
    whole = predict(model, series, (0, split.test[1]), 24)
    np.testing.assert_allclose(warm.model, whole.model[split.test[0] :], atol=1e-6)
    assert not np.allclose(cold.model[:5], warm.model[:5], atol=1e-4)


def test_train_solve_readout_records_the_fit_and_both_scores(tmp_path: Path):
    out = tmp_path / "m" / "1"
    quick = ["--data", "synthetic", "--hidden", "4", "--epochs", "1", "--window", "12"]
    quick += ["--no-classical-baseline", "--quiet", "--residual", "--taps", "2"]
    assert main(["train", *quick, "--solve-readout", "--out", str(out)]) == 0
    manifest = Manifest.load(out)
    fit = manifest.config["readout"]
    assert set(fit) == {
        "penalty",
        "val_mse_trained",
        "val_mse_solved",
        "applied",
        "rows",
        "columns",
    }
    assert " --solve-readout " in manifest.command
    metrics = manifest.metrics
    assert metrics["streamed_from_row"] == 0
    assert set(metrics["cold_start"]) >= {"rmse", "mae", "points"}
    assert metrics["cold_start"]["points"] == metrics["points"]
    # Without the flag: no record, the trained head exported as it was.
    assert main(["train", *quick, "--out", str(tmp_path / "plain")]) == 0
    assert "readout" not in Manifest.load(tmp_path / "plain").config
