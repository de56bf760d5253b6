"""Step batches through fixed-size buffers, one set per batch-size bucket (for CUDA graphs).

A CUDA graph replays the kernels it captured on the addresses it captured, so every run of
a graph session goes through buffers that never move: per bucket (a power of two), input
and output tensors allocated once on the session's device and bound once. A batch of 37
runs in bucket 64: its rows are copied into the first 37 rows of the input buffers, the
other rows are zeros, and only the first 37 rows of the outputs are returned. Rows of a
step are independent sessions, so padding rows never reach the real rows' outputs.

Buffers and the graph of a bucket are made at its first batch (lazily: a server that never
sees a batch of 4096 never allocates one); onnxruntime captures the graph at that run.
Each bucket is its own graph (run option ``gpu_graph_id``). The recurrent state stays in
the host state table: it is copied in with ``x`` and out with ``y`` at every step.

The same code runs on CPU (IOBinding works there too), which is how the padding is tested
without a GPU.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from rnnstream.manifest import INPUT_STATE, INPUT_X, OUTPUT_STATE, OUTPUT_Y

# 2**16 sessions in one call: the largest bucket; larger batches run in slices of it.
MAX_BUCKET = 1 << 16


def bucket_sizes(largest: int = MAX_BUCKET) -> list[int]:
    """The bucket sizes: powers of two from 1 up to the first that holds ``largest`` rows."""
    sizes = [1]
    while sizes[-1] < largest:
        sizes.append(sizes[-1] * 2)
    return sizes


def bucket_for(rows: int, largest: int = MAX_BUCKET) -> int:
    """The smallest bucket that holds ``rows`` (37 -> 64); ValueError past the largest."""
    if rows < 1 or rows > largest:
        raise ValueError(f"a batch of {rows} rows has no bucket (1..{largest})")
    return 1 << (rows - 1).bit_length()


@dataclass
class _Bucket:
    """One bucket's bound buffers: host staging for the inputs, device tensors for all four."""

    x_host: np.ndarray  # [b, F]; rows past the batch stay zero
    state_host: np.ndarray  # [b, S]
    x: ort.OrtValue
    state: ort.OrtValue
    y: ort.OrtValue
    state_out: ort.OrtValue
    binding: ort.IOBinding
    run_options: ort.RunOptions
    filled: int = 0  # rows of the staging buffers the last batch wrote


class BucketedRunner:
    """Runs ``x [n, F], state [n, S]`` of a session through per-bucket bound buffers.

    ``device`` is onnxruntime's name for where the buffers live ("cuda" or "cpu");
    ``graph_ids``: give each bucket its own CUDA graph (the session was created with
    ``enable_cuda_graph``). Calls are serialised: the buffers are shared by every thread.
    """

    def __init__(
        self,
        session: ort.InferenceSession,
        n_features: int,
        n_outputs: int,
        state_size: int,
        device: str,
        graph_ids: bool,
        largest: int = MAX_BUCKET,
    ) -> None:
        self.n_features = n_features
        self.n_outputs = n_outputs
        self.state_size = state_size
        self.device = device
        self.graph_ids = graph_ids
        self.largest = largest
        self.buckets: dict[int, _Bucket] = {}
        self._lock = threading.Lock()
        # Last, so that it is released after the buckets' bindings: onnxruntime's IOBinding
        # keeps a raw pointer to its session and no reference.
        self.session = session

    def run(self, x: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One step for ``n`` sessions; batches past the largest bucket run in slices of it.

        ValueError for what onnxruntime would refuse: copying into the buffers must not
        cast or broadcast it instead.
        """
        n = len(x)
        if (x.dtype, state.dtype, x.shape, state.shape) != (
            np.float32,
            np.float32,
            (n, self.n_features),
            (n, self.state_size),
        ):
            raise ValueError(
                f"x {x.dtype}{list(x.shape)} and state {state.dtype}{list(state.shape)} do not "
                f"fit float32 [B, {self.n_features}] and [B, {self.state_size}]"
            )
        if n <= self.largest:
            return self._run_bucket(x, state)
        parts = [
            self._run_bucket(x[i : i + self.largest], state[i : i + self.largest])
            for i in range(0, len(x), self.largest)
        ]
        return np.concatenate([y for y, _ in parts]), np.concatenate([s for _, s in parts])

    def _run_bucket(self, x: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pad into the batch's bucket, run its bound graph, return the batch's rows."""
        n = len(x)
        size = bucket_for(n, self.largest)
        with self._lock:
            bucket = self.buckets.get(size) or self._make_bucket(size)
            bucket.x_host[:n] = x
            bucket.state_host[:n] = state
            if bucket.filled > n:  # rows a larger batch left: back to zeros
                bucket.x_host[n : bucket.filled] = 0.0
                bucket.state_host[n : bucket.filled] = 0.0
            bucket.filled = n
            bucket.x.update_inplace(bucket.x_host)
            bucket.state.update_inplace(bucket.state_host)
            self.session.run_with_iobinding(bucket.binding, bucket.run_options)
            y, state_out = bucket.y.numpy(), bucket.state_out.numpy()
            if self.device == "cpu":  # there numpy() is a view of the bound buffer
                return y[:n].copy(), state_out[:n].copy()
            return y[:n], state_out[:n]  # a device copy already: views of it are private

    def _make_bucket(self, size: int) -> _Bucket:
        """Allocate and bind one bucket's buffers; its graph is captured at its first run."""

        def tensor(width: int) -> ort.OrtValue:
            return ort.OrtValue.ortvalue_from_shape_and_type(
                [size, width], np.float32, self.device, 0
            )

        x_host = np.zeros((size, self.n_features), np.float32)
        state_host = np.zeros((size, self.state_size), np.float32)
        x, state = tensor(self.n_features), tensor(self.state_size)
        y, state_out = tensor(self.n_outputs), tensor(self.state_size)
        x.update_inplace(x_host)
        state.update_inplace(state_host)
        binding = self.session.io_binding()
        binding.bind_ortvalue_input(INPUT_X, x)
        binding.bind_ortvalue_input(INPUT_STATE, state)
        binding.bind_ortvalue_output(OUTPUT_Y, y)
        binding.bind_ortvalue_output(OUTPUT_STATE, state_out)
        run_options = ort.RunOptions()
        if self.graph_ids:
            # One graph per bucket (-1 would mean "do not capture").
            run_options.add_run_config_entry("gpu_graph_id", str(size.bit_length()))
        bucket = _Bucket(x_host, state_host, x, state, y, state_out, binding, run_options)
        self.buckets[size] = bucket
        return bucket
