"""Bucketed, bound step batches: padding to the bucket never reaches the real rows.

The padded path runs on CPU here: the same code as on CUDA, only the buffers' device and
the CUDA graph ids differ.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rnnstream.manifest import Manifest
from rnnstream.server.graph import StepGraph
from rnnstream.server.graph_buckets import BucketedRunner, bucket_for, bucket_sizes
from tests.conftest import TINY


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tiny") / "1"
    TINY.write(directory, "tiny", "1")
    return directory


def test_bucket_sizes_are_powers_of_two_up_to_the_largest():
    assert bucket_sizes(64) == [1, 2, 4, 8, 16, 32, 64]
    assert bucket_sizes(100)[-1] == 128
    assert [bucket_for(n) for n in (1, 2, 3, 37, 64, 65, 4096)] == [1, 2, 4, 64, 64, 128, 4096]
    with pytest.raises(ValueError):
        bucket_for(0)
    with pytest.raises(ValueError):
        bucket_for(65, largest=64)


def test_padded_batches_match_plain_runs_and_padding_never_leaks(tiny_dir: Path):
    manifest = Manifest.load(tiny_dir)
    plain = StepGraph(tiny_dir / "model.onnx", manifest, device="cpu")
    padded = StepGraph(tiny_dir / "model.onnx", manifest, device="cpu", bucketed=True)
    rng = np.random.default_rng(0)
    f, s = manifest.n_features, manifest.state_size
    # A batch of 60 with huge values fills bucket 64; the 37 after it must not see them.
    big_x = rng.normal(size=(60, f)).astype(np.float32) * 1e6
    big_state = np.full((60, s), 1e6, np.float32)
    padded.run(big_x, big_state)
    for n in (37, 1, 5, 64, 40):
        x = rng.normal(size=(n, f)).astype(np.float32)
        state = rng.normal(size=(n, s)).astype(np.float32)
        y, state_out = padded.run(x, state)
        want_y, want_state = plain.session.run(None, {"x": x, "state": state})
        assert y.shape == want_y.shape and state_out.shape == want_state.shape
        np.testing.assert_allclose(y, want_y, atol=1e-6)
        np.testing.assert_allclose(state_out, want_state, atol=1e-6)
    assert padded._buckets is not None
    assert sorted(padded._buckets.buckets) == [1, 8, 64]
    # The staging rows past the last batch are zeros again.
    assert not padded._buckets.buckets[64].x_host[40:].any()


def test_outputs_are_copies_that_the_next_batch_does_not_overwrite(tiny_dir: Path):
    manifest = Manifest.load(tiny_dir)
    padded = StepGraph(tiny_dir / "model.onnx", manifest, device="cpu", bucketed=True)
    x = np.ones((3, manifest.n_features), np.float32)
    state = np.zeros((3, manifest.state_size), np.float32)
    y, state_out = padded.run(x, state)
    kept = y.copy(), state_out.copy()
    padded.run(-x, state + 1)
    np.testing.assert_array_equal(y, kept[0])
    np.testing.assert_array_equal(state_out, kept[1])


def test_batches_past_the_largest_bucket_run_in_slices(tiny_dir: Path):
    manifest = Manifest.load(tiny_dir)
    plain = StepGraph(tiny_dir / "model.onnx", manifest, device="cpu")
    runner = BucketedRunner(
        plain.session,
        manifest.n_features,
        manifest.n_outputs,
        manifest.state_size,
        "cpu",
        graph_ids=False,
        largest=8,
    )
    rng = np.random.default_rng(1)
    x = rng.normal(size=(21, manifest.n_features)).astype(np.float32)
    state = rng.normal(size=(21, manifest.state_size)).astype(np.float32)
    y, state_out = runner.run(x, state)
    want_y, want_state = plain.session.run(None, {"x": x, "state": state})
    np.testing.assert_allclose(y, want_y, atol=1e-6)
    np.testing.assert_allclose(state_out, want_state, atol=1e-6)
    assert sorted(runner.buckets) == [8]


@pytest.mark.parametrize(
    ("x_shape", "state_shape", "dtype"),
    [((3, 3), (3, 5), np.float32), ((3, 2), (2, 5), np.float32), ((3, 2), (3, 5), np.float64)],
)
def test_the_padded_path_refuses_what_onnxruntime_refuses(tiny_dir, x_shape, state_shape, dtype):
    manifest = Manifest.load(tiny_dir)
    padded = StepGraph(tiny_dir / "model.onnx", manifest, device="cpu", bucketed=True)
    with pytest.raises(ValueError, match="do not fit"):
        padded.run(np.zeros(x_shape, dtype), np.zeros(state_shape, dtype))
