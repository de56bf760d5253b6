"""On the GPU: the provider and placement, parity with CPU, bucketed CUDA graphs, routing."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from bench.gpu_check import MODEL, MODELS, inputs, load_graph
from rnnstream.server.cuda_libs import query_cuda_device
from rnnstream.server.graph import CPU, CUDA, cuda_provider_options

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("chunked", [False, True])
def test_bundled_graphs_load_on_cuda_with_every_node_there(chunked):
    graph, manifest = load_graph("cuda", chunked=chunked)
    assert graph.provider == CUDA
    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    name = manifest.sequence_onnx_file if chunked else manifest.onnx_file
    session = ort.InferenceSession(
        str(MODELS / MODEL / "1" / name),
        options,
        providers=[(CUDA, cuda_provider_options(False)), CPU],
    )
    assert session.get_providers()[0] == CUDA


def test_the_device_is_described():
    device = query_cuda_device(ort)
    assert device.name != "unknown GPU" and device.cudnn != "unknown"


def test_cuda_graphs_keep_the_export_parity_over_300_steps():
    cpu, manifest = load_graph("cpu")
    cuda, _ = load_graph("cuda")
    rng = np.random.default_rng(0)
    h_cpu = h_gpu = np.zeros((64, manifest.state_size), np.float32)
    for _ in range(300):
        x = rng.normal(size=(64, manifest.n_features)).astype(np.float32)
        y_cpu, h_cpu = cpu.run(x, h_cpu)
        y_gpu, h_gpu = cuda.run(x, h_gpu)
        assert np.abs(y_cpu - y_gpu).max() <= 1e-5
    assert np.abs(h_cpu - h_gpu).max() <= 1e-5


def test_a_batch_of_37_runs_in_bucket_64_and_padding_does_not_leak():
    cpu, manifest = load_graph("cpu")
    cuda, _ = load_graph("cuda")
    big_x, big_state = inputs(60, manifest)
    cuda.run(big_x * 1e6, big_state + 1e6)
    x, state = inputs(37, manifest)
    y, state_out = cuda.run(x, state)
    want_y, want_state = cpu.run(x, state)
    np.testing.assert_allclose(y, want_y, atol=1e-5)
    np.testing.assert_allclose(state_out, want_state, atol=1e-5)
    assert cuda._buckets is not None and 64 in cuda._buckets.buckets


@pytest.mark.parametrize("chunked", [False, True])
def test_auto_keeps_a_cpu_session_and_routes_by_measured_cost(chunked):
    graph, manifest = load_graph("auto", chunked=chunked)
    assert graph.provider == CUDA and graph.router is not None
    assert graph.router.describe().startswith(("cpu from 1", "cuda from 1"))
    steps = 4 if chunked else 0
    x, state = inputs(3, manifest, steps)
    cpu, _ = load_graph("cpu", chunked=chunked)
    np.testing.assert_allclose(graph.run(x, state)[0], cpu.run(x, state)[0], atol=1e-5)
