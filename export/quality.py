"""Whether a trained model is worth serving: its held-out error against the naive baseline.

A model that loses to the naive answer (persistence, historical volatility) is still
exported, since it is a valid graph and the user may want it anyway, but the run says so
on stderr and the manifest's ``warnings`` records it.
"""

from __future__ import annotations

from typing import Any

from rnnstream.export.train import History


def beats_baseline(test: dict[str, float]) -> bool:
    """True when the model's test RMSE is below the baseline's on the same points.

    RMSE, not MAE, because the training loss is a mean squared error. A ratio that is not
    a number (no comparable points) or infinite (a perfect baseline) does not beat it.
    """
    return bool(test["rmse_ratio"] < 1.0)


def baseline_warnings(test: dict[str, float], baseline: str, history: History) -> list[str]:
    """One warning if the model is worse than ``baseline`` on the test split, else none.

    ``test`` is :func:`rnnstream.export.train.score`'s result; the warning says what was
    measured and what to try, using ``history`` to tell whether training stopped too soon.
    """
    if beats_baseline(test):
        return []
    epochs_run = len(history.train_loss)
    if not history.stopped_early and history.best_epoch == epochs_run:
        advice = (
            f"Validation loss was still falling at the last of {epochs_run} epoch(s): train "
            "longer (more --epochs); a larger --hidden, another --lr or a longer --window may "
            "also help."
        )
    else:
        advice = (
            f"Validation loss stopped improving at epoch {history.best_epoch} of {epochs_run}: "
            "try a larger --hidden, another --lr or a longer --window."
        )
    return [
        f"the model is worse than the naive baseline ({baseline}) on the held-out test "
        f"split: RMSE {test['rmse']:.4g} vs {test['baseline_rmse']:.4g} (model / baseline "
        f"{test['rmse_ratio']:.3g}), MAE {test['mae']:.4g} vs {test['baseline_mae']:.4g}, "
        f"over {test['points']} predictions; it was exported anyway. {advice}"
    ]


def strongest_baseline_warnings(compared: dict[str, Any]) -> list[str]:
    """One warning if the model's test RMSE is not below the strongest baseline's, else none.

    ``compared`` is :func:`rnnstream.export.baselines.compare`'s result (persistence, the
    seasonal naive, the classical model, scored on the model's points).
    """
    name = compared.get("strongest", "")
    if name in ("", "persistence") or compared[name]["rmse_ratio"] < 1.0:
        return []  # persistence is the naive baseline, which baseline_warnings covers
    best = compared[name]
    return [
        f"the model is not better than the strongest baseline, {best['spec']}, on the "
        f"held-out test split: RMSE {compared['model_rmse']:.4g} vs {best['rmse']:.4g} "
        f"(model / baseline {best['rmse_ratio']:.3g}) over {compared['points']} predictions"
    ]
