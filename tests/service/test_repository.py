"""The model repository loads what matches its manifest and refuses, saying why, what does not."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from rnnstream.manifest import Manifest, ManifestError
from rnnstream.server.errors import NotFound
from rnnstream.server.repository import ModelLoadError, ModelRepository
from rnnstream.server.settings import Settings
from tests.conftest import TINY


def settings(root: Path) -> Settings:
    return Settings.from_env({}, models=root, max_sessions=8)


def write(root: Path, name: str = "m", version: str = "1") -> Path:
    TINY.write(root / name / version, name, version)
    return root / name / version


def edit_manifest(directory: Path, **changes: object) -> None:
    path = directory / "manifest.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_versions_resolve_latest_numerically(tmp_path):
    for version in ("1", "2", "10"):
        write(tmp_path, version=version)
    repo = ModelRepository.load(settings(tmp_path))
    try:
        assert repo.get("m").manifest.version == "10"
        assert repo.get("m", "2").manifest.version == "2"
        assert repo.get().manifest.name == "m"  # default falls back to the first model
        with pytest.raises(NotFound, match="versions: 1, 2, 10"):
            repo.get("m", "3")
    finally:
        repo.close()


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (
            {"n_features": 3, "feature_names": ["a", "b", "c"]},
            "input x has width 2, the manifest says 3",
        ),
        ({"n_outputs": 2, "output_names": ["a", "b"]}, "output y has width 3, the manifest says 2"),
        ({"hidden_size": 4, "state_size": 4}, "input state has width 5, the manifest says 4"),
        ({"onnx_sha256": "0" * 64}, "the file changed after export"),
        ({"name": "other"}, "names other/1, but it lies in m/1"),
    ],
)
def test_refuses_a_graph_that_differs_from_its_manifest(tmp_path, change, fragment):
    edit_manifest(write(tmp_path), **change)
    with pytest.raises(ModelLoadError) as err:
        ModelRepository.load(settings(tmp_path))
    assert fragment in str(err.value)


def test_refuses_an_inconsistent_manifest(tmp_path):
    edit_manifest(write(tmp_path), state_size=7)
    with pytest.raises(
        ModelLoadError, match="state_size is 7, but a 1-layer rnn with hidden_size 5"
    ):
        ModelRepository.load(settings(tmp_path))


def test_refuses_missing_graph_and_empty_repository(tmp_path):
    with pytest.raises(ModelLoadError, match="no models in"):
        ModelRepository.load(settings(tmp_path))
    (write(tmp_path) / "model.onnx").unlink()
    with pytest.raises(ModelLoadError, match=r"model\.onnx does not exist"):
        ModelRepository.load(settings(tmp_path))


def test_manifest_round_trip_and_unknown_keys(tmp_path):
    directory = write(tmp_path)
    manifest = Manifest.load(directory)
    manifest.save(tmp_path)
    assert Manifest.load(tmp_path) == manifest
    edit_manifest(directory, surprise=1)
    with pytest.raises(ManifestError, match=r"unknown keys \['surprise'\]"):
        Manifest.load(directory)


def test_bundled_models_load(tmp_path):
    bundled = Path(__file__).resolve().parents[2] / "models"
    if not any(bundled.glob("*/*/manifest.json")):
        pytest.fail("no bundled models in models/")
    shutil.copytree(bundled, tmp_path / "models")
    repo = ModelRepository.load(settings(tmp_path / "models"))
    try:
        assert repo.default_name == "seattle-temp"
        assert repo.get().manifest.return_sequences is True
    finally:
        repo.close()
