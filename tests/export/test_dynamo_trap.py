"""Why export uses the legacy exporter: the dynamo exporter unrolls ``nn.RNN`` over T.

Observed on torch 2.13 with onnxscript 0.7: exporting a *sequence* graph of ``nn.RNN``
with ``dynamo=True`` from an example of length T=5

- with ``Dim.AUTO`` on the time axis, the graph *declares* T dynamic, but the recurrence is
  unrolled five times: at T=12 onnxruntime runs without complaint and silently returns five
  steps instead of twelve; at T=3 it fails inside the graph;
- with a named ``Dim("T")``, the time axis is silently specialised to 5: the graph only
  accepts T=5.

Either way only the example length works. The legacy exporter emits ONNX's native ``RNN``
op, whose loop runs over whatever T arrives (and our step graph has no T at all).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch

EXAMPLE_T = 5


def dynamo_sequence_graph(rnn: torch.nn.RNN, time_dim: Any) -> ort.InferenceSession:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's own deprecation/attribute notes
        program = torch.onnx.export(
            rnn,
            (torch.randn(1, EXAMPLE_T, 2),),
            dynamo=True,
            dynamic_shapes={"input": {1: time_dim}},
            verbose=False,
        )
    assert program is not None
    return ort.InferenceSession(
        program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"]
    )


@pytest.fixture(scope="module")
def rnn() -> torch.nn.RNN:
    torch.manual_seed(0)
    return torch.nn.RNN(2, 4, batch_first=True).eval()


def run(session: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.mark.slow
def test_dynamo_unrolls_rnn_to_the_example_length(rnn: torch.nn.RNN):
    session = dynamo_sequence_graph(rnn, torch.export.Dim.AUTO)
    assert isinstance(session.get_inputs()[0].shape[1], str)  # T *looks* dynamic
    x5 = np.random.default_rng(0).standard_normal((1, EXAMPLE_T, 2)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(
            run(session, x5), rnn(torch.from_numpy(x5))[0].numpy(), atol=1e-5
        )
    x12 = np.random.default_rng(1).standard_normal((1, 12, 2)).astype(np.float32)
    y12 = run(session, x12)  # no error...
    assert y12.shape == (1, EXAMPLE_T, 4)  # ...but only 5 of the 12 steps come back
    x3 = x12[:, :3]
    with pytest.raises(Exception, match=r"(?i)invalid|index"):
        run(session, x3)


@pytest.mark.slow
def test_dynamo_specialises_a_named_time_dim(rnn: torch.nn.RNN):
    session = dynamo_sequence_graph(rnn, torch.export.Dim("T"))
    assert session.get_inputs()[0].shape == [1, EXAMPLE_T, 2]
    with pytest.raises(Exception, match=r"(?i)invalid dimensions"):
        run(session, np.zeros((1, 12, 2), np.float32))


def test_legacy_sequence_graph_handles_any_length(rnn: torch.nn.RNN, tmp_path):
    path = tmp_path / "seq.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # legacy-exporter deprecation and tracer notes
        torch.onnx.export(
            rnn,
            (torch.randn(1, EXAMPLE_T, 2),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["x"],
            output_names=["y", "h"],
            dynamic_axes={"x": {0: "B", 1: "T"}, "y": {0: "B", 1: "T"}},
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for steps in (3, 12, 200):
        x = np.random.default_rng(steps).standard_normal((2, steps, 2)).astype(np.float32)
        with torch.no_grad():
            expected = rnn(torch.from_numpy(x))[0].numpy()
        np.testing.assert_allclose(run(session, x), expected, atol=1e-5)
