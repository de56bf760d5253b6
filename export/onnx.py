"""ONNX export of the one-step graph, verified against torch before anything is written.

The step graph is the contract between training and serving: inputs ``x [B, F]`` and
``state [B, S]``, outputs ``y [B, O]`` and ``state_out [B, S]``, one time step for a batch
of independent sessions, with ``B`` dynamic. ``state`` is the whole recurrent state
flattened to one row per session (``h`` of every layer, then for an LSTM ``c`` of every
layer), and input normalisation and output de-normalisation happen inside the graph, so
it takes and returns raw units. It is exported with the legacy TorchScript exporter
(``dynamo=False``, opset 17), which emits ONNX's native ``RNN``/``GRU``/``LSTM`` operators.
The dynamo exporter unrolls ``nn.RNN`` over the example sequence length instead (see
``tests/export/test_dynamo_trap.py``); for a one-step graph that would be harmless, but the
legacy graph is also the leanest.

:func:`verify` steps the graph ``T`` times in onnxruntime and compares every output and
state with torch running the whole sequence at once; :func:`write_artifact` refuses to
write a model that disagrees by more than the tolerance.
"""

from __future__ import annotations

import io
import math
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import Tensor, nn

from rnnstream.export.model import SequenceModel
from rnnstream.manifest import (
    INPUT_STATE,
    INPUT_X,
    MANIFEST_FILE,
    ONNX_FILE,
    OUTPUT_STATE,
    OUTPUT_Y,
    SEQUENCE_ONNX_FILE,
    Manifest,
    sha256_file,
)

OPSET = 17
TOLERANCE = 1e-5  # max |diff| of y (in output-std units) and of the state
VERIFY_BATCH = 5
VERIFY_STEPS = 64
ARTIFACT_FILES = (ONNX_FILE, SEQUENCE_ONNX_FILE, MANIFEST_FILE)  # what write_artifact writes


class ParityError(RuntimeError):
    """The exported graph does not reproduce the torch model; nothing was written."""


class StepGraphModule(nn.Module):
    """The torch module exported as the step graph: one step of a :class:`SequenceModel`.

    It becomes ``model.onnx``; the server loads that file as its own ``StepGraph``.
    """

    def __init__(self, model: SequenceModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """``x [B, F]``, ``state [B, S]`` -> ``y [B, O]``, ``state_out [B, S]``."""
        y, state_out = self.model(x.unsqueeze(1), state)  # [B, 1, F] -> [B, 1, O]
        return y.squeeze(1), state_out  # [B, O], [B, S]


class SequenceGraphModule(nn.Module):
    """The torch module exported as the sequence graph: a chunk of steps, ``sequence.onnx``."""

    def __init__(self, model: SequenceModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """``x [B, T, F]``, ``state [B, S]`` -> ``y [B, T, O]``, ``state_out [B, S]``."""
        y, state_out = self.model(x, state)
        return y, state_out


def step_graph_bytes(model: SequenceModel, step: nn.Module | None = None) -> bytes:
    """Export the step graph of ``model`` (or of the given ``step`` module) to ONNX bytes."""
    model = model.cpu().eval()
    step = (step if step is not None else StepGraphModule(model)).eval()
    example = (torch.zeros(2, model.config.n_features), model.zero_state(2))
    return _export(step, example, time_axis=False)


def sequence_graph_bytes(model: SequenceModel) -> bytes:
    """Export ``model`` over whole chunks (B and T dynamic) to ONNX bytes.

    The example has T=2; :func:`verify_sequence` checks other lengths, since a graph that
    silently fixed T to the example's would be wrong for every other chunk.
    """
    model = model.cpu().eval()
    example = (torch.zeros(2, 2, model.config.n_features), model.zero_state(2))
    return _export(SequenceGraphModule(model).eval(), example, time_axis=True)


def _export(module: nn.Module, example: tuple[Tensor, Tensor], time_axis: bool) -> bytes:
    """The legacy exporter, opset 17, with a dynamic batch (and time) axis."""
    batch: dict[int, str] = {0: "B", 1: "T"} if time_axis else {0: "B"}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # Expected and harmless here: the legacy exporter announces its deprecation; the
        # tracer notes torch.nn.RNNBase's Python-side checks (they do not depend on data);
        # the LSTM symbolic warns about batch sizes, which our parity check covers.
        warnings.filterwarnings(
            "ignore", r"You are using the legacy TorchScript", DeprecationWarning
        )
        warnings.filterwarnings("ignore", r"The feature will be removed", DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings(
            "ignore", message=r".*batch_size other than 1.*", category=UserWarning
        )
        with torch.no_grad():
            torch.onnx.export(
                module,
                example,
                cast(Any, buffer),  # a file-like object works; the stubs say path only
                dynamo=False,
                opset_version=OPSET,
                input_names=[INPUT_X, INPUT_STATE],
                output_names=[OUTPUT_Y, OUTPUT_STATE],
                dynamic_axes={
                    INPUT_X: batch,
                    INPUT_STATE: {0: "B"},
                    OUTPUT_Y: batch,
                    OUTPUT_STATE: {0: "B"},
                },
                do_constant_folding=True,
            )
    return buffer.getvalue()


def ort_session(onnx_bytes: bytes) -> ort.InferenceSession:
    """A CPU onnxruntime session over serialized graph bytes."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])


@dataclass(frozen=True)
class Parity:
    """How far the stepped graph strayed from torch: max |diff| of y (scaled) and state."""

    y: float
    state: float
    batch: int
    steps: int

    @property
    def worst(self) -> float:
        """The larger of the two; infinite when either is NaN (a NaN must never pass)."""
        if math.isnan(self.y) or math.isnan(self.state):
            return math.inf
        return max(self.y, self.state)


def verify(
    model: SequenceModel,
    onnx_bytes: bytes,
    batch: int = VERIFY_BATCH,
    steps: int = VERIFY_STEPS,
    seed: int = 0,
    inputs: np.ndarray | None = None,
) -> Parity:
    """Step the graph ``steps`` times in onnxruntime and compare with torch on the sequence.

    Inputs are ``inputs [B, T, F]`` if given, else draws around the model's own input
    statistics. ``y`` differences are measured in units of the output standard deviation
    (so a model of prices in the thousands is held to the same relative standard as one of
    unit-scale values); state differences as they are.
    """
    model = model.cpu().eval()
    if inputs is None:
        gen = np.random.default_rng(seed)
        noise = gen.standard_normal((batch, steps, model.config.n_features)).astype(np.float32)
        inputs = noise * model.x_std.numpy() + model.x_mean.numpy()  # [B, T, F] raw units
    inputs = np.ascontiguousarray(inputs, dtype=np.float32)
    batch, steps = inputs.shape[0], inputs.shape[1]
    with torch.no_grad():
        y_ref, state_ref = model(torch.from_numpy(inputs))  # [B, T, O], [B, S]
    session = ort_session(onnx_bytes)
    state = np.zeros((batch, model.state_size), dtype=np.float32)
    ys = []
    for t in range(steps):
        y_t, state = session.run(
            [OUTPUT_Y, OUTPUT_STATE], {INPUT_X: inputs[:, t], INPUT_STATE: state}
        )  # [B, O], [B, S]
        ys.append(y_t)
    y_onnx = np.stack(ys, axis=1)  # T x [B, O] -> [B, T, O]
    if y_onnx.shape != tuple(y_ref.shape) or state.shape != tuple(state_ref.shape):
        raise ParityError(
            f"shape mismatch: onnx y {y_onnx.shape} / state {state.shape}, torch "
            f"{tuple(y_ref.shape)} / {tuple(state_ref.shape)}"
        )
    y_scale = model.y_std.numpy()
    return Parity(
        y=float(np.max(np.abs(y_onnx - y_ref.numpy()) / y_scale)),
        state=float(np.max(np.abs(state - state_ref.numpy()))),
        batch=batch,
        steps=steps,
    )


def verify_sequence(
    model: SequenceModel, onnx_bytes: bytes, lengths: tuple[int, ...] = (1, 3, 64), seed: int = 1
) -> Parity:
    """Run the sequence graph over chunks of several lengths from a random state; compare."""
    model = model.cpu().eval()
    session = ort_session(onnx_bytes)
    gen = np.random.default_rng(seed)
    worst = Parity(0.0, 0.0, VERIFY_BATCH, 0)
    for steps in lengths:
        noise = gen.standard_normal((VERIFY_BATCH, steps, model.config.n_features))
        x = (noise * model.x_std.numpy() + model.x_mean.numpy()).astype(np.float32)  # [B, T, F]
        state = (0.5 * gen.standard_normal((VERIFY_BATCH, model.state_size))).astype(np.float32)
        with torch.no_grad():
            y_ref, state_ref = model(torch.from_numpy(x), torch.from_numpy(state))
        try:
            y, state_out = session.run(
                [OUTPUT_Y, OUTPUT_STATE], {INPUT_X: x, INPUT_STATE: state}
            )  # [B, T, O], [B, S]
        except Exception as exc:  # onnxruntime raises several unrelated types
            raise ParityError(
                f"sequence graph fails for a chunk of T={steps} steps: {exc}"
            ) from exc
        if y.shape != tuple(y_ref.shape):
            raise ParityError(
                f"sequence graph returns y {list(y.shape)} for T={steps}, torch "
                f"{list(y_ref.shape)}: the time axis is not dynamic"
            )
        parity = Parity(
            y=float(np.max(np.abs(y - y_ref.numpy()) / model.y_std.numpy())),
            state=float(np.max(np.abs(state_out - state_ref.numpy()))),
            batch=VERIFY_BATCH,
            steps=steps,
        )
        worst = max(worst, parity, key=lambda p: p.worst)
    return worst


def check_io_matches_manifest(onnx_bytes: bytes, manifest: Manifest) -> None:
    """Refuse a graph that is not valid ONNX or whose inputs/outputs differ from the manifest.

    Expected: ``x [B, F]``, ``state [B, S]`` -> ``y [B, O]``, ``state_out [B, S]`` with the
    manifest's widths and ``B`` dynamic; raises :class:`ParityError`.
    """
    graph = onnx.load_from_string(onnx_bytes)
    onnx.checker.check_model(graph)

    def dims(values: list[onnx.ValueInfoProto]) -> dict[str, list[int | str]]:
        return {
            v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in values
        }

    expected = {
        INPUT_X: ["B", manifest.n_features],
        INPUT_STATE: ["B", manifest.state_size],
        OUTPUT_Y: ["B", manifest.n_outputs],
        OUTPUT_STATE: ["B", manifest.state_size],
    }
    actual = dims(list(graph.graph.input)) | dims(list(graph.graph.output))
    if actual != expected:
        raise ParityError(
            f"graph inputs/outputs {actual} differ from the manifest's {expected}; nothing written"
        )


def versions() -> dict[str, str]:
    """Versions of the tools that made the artifact."""
    return {
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
    }


def write_artifact(
    model: SequenceModel,
    manifest: Manifest,
    out_dir: Path,
    *,
    verify_inputs: np.ndarray | None = None,
    tolerance: float = TOLERANCE,
    step: nn.Module | None = None,
) -> tuple[Manifest, Parity]:
    """Export, verify, then write ``model.onnx``, ``sequence.onnx`` and ``manifest.json``.

    Raises :class:`ParityError` and writes nothing if the graph's outputs or states differ
    from torch's by more than ``tolerance`` (random inputs; plus ``verify_inputs`` if given).
    ``step`` replaces the exported module (tests use it to prove the check bites).
    """
    onnx_bytes = step_graph_bytes(model, step)
    check_io_matches_manifest(onnx_bytes, manifest)
    sequence_bytes = sequence_graph_bytes(model)
    results = [verify(model, onnx_bytes), verify_sequence(model, sequence_bytes)]
    if verify_inputs is not None:
        results.append(verify(model, onnx_bytes, inputs=verify_inputs))
    worst = max(results, key=lambda p: p.worst)
    if not worst.worst <= tolerance:  # also catches NaN
        raise ParityError(
            f"{manifest.name}/{manifest.version}: onnxruntime stepping the graph "
            f"{worst.steps} times differs from torch on the whole sequence (batch "
            f"{worst.batch}): max |diff| y {worst.y:.3g} (output-std units), state "
            f"{worst.state:.3g} > tolerance {tolerance:g}; nothing written to {out_dir}"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        staged = Path(tmp) / ONNX_FILE
        staged.write_bytes(onnx_bytes)
        staged_sequence = Path(tmp) / SEQUENCE_ONNX_FILE
        staged_sequence.write_bytes(sequence_bytes)
        final = replace(
            manifest,
            onnx_file=ONNX_FILE,
            onnx_sha256=sha256_file(staged),
            sequence_onnx_file=SEQUENCE_ONNX_FILE,
            sequence_onnx_sha256=sha256_file(staged_sequence),
            opset=OPSET,
            versions=versions(),
        )
        final.save(Path(tmp))
        for name in ARTIFACT_FILES:
            shutil.move(str(Path(tmp) / name), str(out_dir / name))
    return final, worst
