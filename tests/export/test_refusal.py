"""An export that does not reproduce torch is refused, with a clear error, and writes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from rnnstream.export.model import ModelConfig, SequenceModel
from rnnstream.export.onnx import ParityError, write_artifact
from rnnstream.manifest import Manifest, sha256_file


def make(cell: str = "gru") -> tuple[SequenceModel, Manifest]:
    torch.manual_seed(0)
    config = ModelConfig(cell=cell, n_features=2, n_outputs=1, hidden_size=8, layers=2)
    manifest = Manifest(
        name="t",
        version="1",
        cell=cell,
        layers=2,
        hidden_size=8,
        n_features=2,
        n_outputs=1,
        state_size=config.state_size,
        feature_names=["a", "b"],
        output_names=["y"],
    )
    return SequenceModel(config).eval(), manifest


class ForgetsState(nn.Module):
    """A classic export bug: the step ignores the incoming state (always starts from zeros)."""

    def __init__(self, model: SequenceModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        y, state_out = self.model(x.unsqueeze(1), torch.zeros_like(state))
        return y.squeeze(1), state_out


class SwapsHAndC(nn.Module):
    """Another: an LSTM step that writes its state back as (c, h) instead of (h, c)."""

    def __init__(self, model: SequenceModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        y, state_out = self.model(x.unsqueeze(1), state)
        size = self.model.state_size
        swapped = torch.cat([state_out[:, size // 2 :], state_out[:, : size // 2]], dim=1)
        return y.squeeze(1), swapped.reshape(x.shape[0], size)  # [B, S]


@pytest.mark.parametrize(("cell", "broken"), [("gru", ForgetsState), ("lstm", SwapsHAndC)])
def test_a_broken_graph_is_refused_and_nothing_is_written(tmp_path: Path, cell: str, broken: type):
    model, manifest = make(cell)
    out = tmp_path / "models" / "t" / "1"
    with pytest.raises(ParityError, match=r"differs from torch.*nothing written"):
        write_artifact(model, manifest, out, step=broken(model))
    assert not out.exists()
    assert list(tmp_path.rglob("*")) == []


def test_a_graph_that_does_not_match_its_manifest_is_refused(tmp_path: Path):
    model, manifest = make()
    manifest.n_features = 3
    manifest.feature_names = ["a", "b", "c"]
    with pytest.raises(ParityError, match="differ from the manifest"):
        write_artifact(model, manifest, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_good_model_is_written_with_its_hash(tmp_path: Path):
    model, manifest = make("lstm")
    final, parity = write_artifact(model, manifest, tmp_path / "out")
    assert parity.worst <= 1e-5
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "manifest.json",
        "model.onnx",
        "sequence.onnx",
    ]
    loaded = Manifest.load(tmp_path / "out")
    assert loaded == final
    assert loaded.onnx_sha256 == sha256_file(tmp_path / "out" / "model.onnx")
    assert loaded.sequence_onnx_sha256 == sha256_file(tmp_path / "out" / "sequence.onnx")
    assert loaded.opset == 17 and loaded.versions["torch"] == torch.__version__


def test_a_nan_comparison_never_passes():
    from rnnstream.export.onnx import Parity

    assert Parity(1e-7, float("nan"), 1, 1).worst == float("inf")
    assert Parity(float("nan"), 0.0, 1, 1).worst == float("inf")
