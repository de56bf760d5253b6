"""The training loop: reproducible, truncated BPTT, clipping, early stopping, learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rnnstream.export import train as training
from rnnstream.export.data import Series, Split, load_msft_vol, load_synthetic, time_split
from rnnstream.export.model import ModelConfig
from rnnstream.export.train import TrainConfig, predict, score, train


@pytest.fixture(scope="module")
def synthetic() -> tuple[Series, Split]:
    series = load_synthetic(rows=800)
    return series, time_split(len(series))


def weights(result: training.TrainResult) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in result.model.state_dict().items()}


def test_same_seed_same_weights_bitwise(synthetic):
    series, split = synthetic
    config = ModelConfig(cell="lstm", n_features=2, n_outputs=1, hidden_size=8)
    cfg = TrainConfig(epochs=2, window=24, seed=7, tbptt=8)
    first, second = (
        weights(train(series, split, config, cfg)),
        weights(train(series, split, config, cfg)),
    )
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key
    other = weights(train(series, split, config, TrainConfig(epochs=2, window=24, seed=8, tbptt=8)))
    assert not torch.equal(first["head.weight"], other["head.weight"])


def test_deterministic_context_restores_global_settings():
    threads = torch.get_num_threads()
    flag = torch.are_deterministic_algorithms_enabled()
    with training.deterministic(0):
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == flag


class Spy:
    """Counts optimizer steps and records clip_grad_norm_ calls."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.steps = 0
        self.clips: list[float] = []
        step = torch.optim.Adam.step
        clip = torch.nn.utils.clip_grad_norm_

        def counting_step(opt, *args, **kwargs):
            self.steps += 1
            return step(opt, *args, **kwargs)

        def recording_clip(params, max_norm, *args, **kwargs):
            self.clips.append(max_norm)
            return clip(params, max_norm, *args, **kwargs)

        monkeypatch.setattr(torch.optim.Adam, "step", counting_step)
        monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording_clip)


def n_windows(rows: int, window: int, stride: int) -> int:
    return (rows - window) // stride + 1


def test_tbptt_takes_one_step_per_chunk_and_clips_each(synthetic, monkeypatch):
    series, split = synthetic
    spy = Spy(monkeypatch)
    cfg = TrainConfig(epochs=1, window=24, stride=6, tbptt=8, clip=0.5, batch_size=16)
    train(series, split, ModelConfig(cell="gru", n_features=2, hidden_size=8), cfg)
    batches = -(-n_windows(split.sizes()["train"], 24, 6) // 16)  # ceil
    assert spy.steps == batches * 3  # 24 steps in chunks of 8
    assert spy.clips == [0.5] * spy.steps


def test_full_bptt_takes_one_step_per_batch_and_clip_zero_is_off(synthetic, monkeypatch):
    series, split = synthetic
    spy = Spy(monkeypatch)
    cfg = TrainConfig(epochs=1, window=24, stride=6, tbptt=0, clip=0.0, batch_size=16)
    train(series, split, ModelConfig(cell="rnn", n_features=2, hidden_size=8), cfg)
    assert spy.steps == -(-n_windows(split.sizes()["train"], 24, 6) // 16)
    assert spy.clips == []


def test_many_to_one_tbptt_learns_only_on_the_last_chunk(monkeypatch):
    series = load_msft_vol(window=12)
    series.x, series.y, series.baseline = series.x[-600:], series.y[-600:], series.baseline[-600:]
    series.index = series.index[-600:]
    split = time_split(len(series))
    spy = Spy(monkeypatch)
    cfg = TrainConfig(epochs=1, window=12, tbptt=4, batch_size=64)
    train(series, split, ModelConfig(cell="lstm", n_features=2, hidden_size=4), cfg)
    assert spy.steps == -(-n_windows(split.sizes()["train"], 12, 1) // 64)


def test_early_stopping_keeps_the_best_epoch(synthetic, monkeypatch):
    series, split = synthetic
    losses = iter([1.0, 0.5, 0.6, 0.7, 0.8, 0.9])
    monkeypatch.setattr(training, "normalized_mse", lambda model, pred: next(losses))
    result = train(
        series,
        split,
        ModelConfig(cell="gru", n_features=2, hidden_size=4),
        TrainConfig(epochs=6, window=24, patience=2),
    )
    assert result.history.best_epoch == 2
    assert result.history.stopped_early
    assert len(result.history.train_loss) == 4


@pytest.mark.slow
def test_learns_to_beat_persistence_on_synthetic():
    series = load_synthetic(rows=1500)
    split = time_split(len(series))
    config = ModelConfig(cell="gru", n_features=2, hidden_size=16)
    result = train(series, split, config, TrainConfig(epochs=8, window=48, stride=8, lr=1e-2))
    metrics = score(predict(result.model, series, split.test, 48))
    assert metrics["rmse_ratio"] < 0.9, metrics


def test_invalid_settings_are_refused():
    with pytest.raises(ValueError, match="tbptt=-1"):
        TrainConfig(tbptt=-1)


def test_level_shift_moves_a_window_and_its_targets_by_one_offset():
    gen = np.random.default_rng(0)
    x = torch.arange(24, dtype=torch.float32).reshape(2, 4, 3)  # [B, W, F]
    y = x[..., 1:2] + 0.5  # the target: input column 1, half a unit later
    [(xs, ys)] = list(training._shifted(iter([(x, y)]), 1, 10.0, gen))
    offset = xs[..., 1:2] - x[..., 1:2]  # [B, W, 1]
    assert float(offset.abs().min()) > 0
    torch.testing.assert_close(offset, offset[:, :1].expand_as(offset))  # one per window
    assert not torch.allclose(offset[0], offset[1])
    torch.testing.assert_close(ys - y, offset)
    torch.testing.assert_close(xs[..., [0, 2]], x[..., [0, 2]])  # other inputs untouched
    assert list(training._shifted(iter([(x, y)]), None, 0.0, gen)) == [(x, y)]
    with pytest.raises(ValueError, match="level-shift"):
        list(training._shifted(iter([(x, y)]), None, 1.0, gen))
