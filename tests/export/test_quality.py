"""The decision to warn about a model that loses to its naive baseline, and what it says."""

from __future__ import annotations

import math

import pytest

from rnnstream.export.quality import baseline_warnings, beats_baseline
from rnnstream.export.train import History


def scored(rmse: float, baseline_rmse: float) -> dict[str, float]:
    """A :func:`rnnstream.export.train.score` result with the given RMSEs."""
    ratio = rmse / baseline_rmse if baseline_rmse > 0 else math.inf
    return {
        "rmse": rmse,
        "mae": rmse * 0.8,
        "baseline_rmse": baseline_rmse,
        "baseline_mae": baseline_rmse * 0.8,
        "rmse_ratio": ratio,
        "mae_ratio": ratio,
        "points": 600,
    }


def history(epochs: int, best: int, stopped_early: bool = False) -> History:
    return History(
        train_loss=[1.0] * epochs,
        val_loss=[1.0] * epochs,
        best_epoch=best,
        stopped_early=stopped_early,
    )


@pytest.mark.parametrize(
    ("rmse", "baseline_rmse", "beats"),
    [
        (0.25, 0.65, True),
        (0.65, 0.65, False),  # a tie does not beat it
        (1.2, 0.6, False),
        (0.1, 0.0, False),  # a perfect baseline: ratio infinite
        (math.nan, 0.6, False),  # nothing comparable
    ],
)
def test_beats_baseline_compares_test_rmse(rmse: float, baseline_rmse: float, beats: bool):
    assert beats_baseline(scored(rmse, baseline_rmse)) is beats


def test_a_model_that_beats_its_baseline_gets_no_warning():
    assert baseline_warnings(scored(0.2553, 0.6463), "persistence", history(40, 35, True)) == []


def test_the_warning_says_what_was_measured_and_to_train_longer():
    [warning] = baseline_warnings(scored(0.596, 0.3113), "persistence", history(2, 2))
    assert "worse than the naive baseline (persistence)" in warning
    assert "held-out test split" in warning
    assert "RMSE 0.596 vs 0.3113" in warning and "(model / baseline 1.91)" in warning
    assert "over 600 predictions" in warning and "exported anyway" in warning
    assert "still falling at the last of 2 epoch(s)" in warning and "more --epochs" in warning


def test_after_early_stopping_the_warning_does_not_just_say_train_longer():
    [warning] = baseline_warnings(scored(1.2, 0.6), "persistence", history(9, 4, True))
    assert "stopped improving at epoch 4 of 9" in warning
    assert "more --epochs" not in warning and "--hidden" in warning
