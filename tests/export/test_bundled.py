"""The bundled models: manifests consistent with their graphs, metrics that hold up."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from rnnstream.export import data
from rnnstream.export.quality import strongest_baseline_warnings
from rnnstream.manifest import Manifest, sha256_file

MODELS = Path(__file__).resolve().parents[2] / "models"
# name/version -> required test RMSE ratio against the naive baseline. seattle-temp/1 stays
# for clients that pinned it (its state row is 32 wide); 2, the latest, is the default.
BUNDLED = {"seattle-temp/1": 0.9, "seattle-temp/2": 0.9, "msft-vol/1": 1.0}
SEATTLE = MODELS / "seattle-temp" / "2"


@pytest.fixture(params=sorted(BUNDLED), scope="module")
def bundled(request) -> tuple[Path, Manifest]:
    directory = MODELS / request.param
    return directory, Manifest.load(directory)


def test_every_bundled_model_is_tested():
    found = {f"{p.parent.parent.name}/{p.parent.name}" for p in MODELS.glob("*/*/manifest.json")}
    assert found == set(BUNDLED)


def test_manifest_matches_the_graph(bundled):
    directory, manifest = bundled
    path = directory / manifest.onnx_file
    assert manifest.onnx_sha256 == sha256_file(path)
    assert path.stat().st_size < 1_000_000
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert proto.opset_import[0].version == manifest.opset == 17
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    shapes = {v.name: v.shape for v in [*session.get_inputs(), *session.get_outputs()]}
    assert shapes == {
        "x": ["B", manifest.n_features],
        "state": ["B", manifest.state_size],
        "y": ["B", manifest.n_outputs],
        "state_out": ["B", manifest.state_size],
    }
    assert [n.op_type for n in proto.graph.node].count(manifest.cell.upper()) == manifest.layers


def test_manifest_records_how_it_was_made(bundled):
    _directory, manifest = bundled
    argv = shlex.split(manifest.command)
    assert argv[:4] == ["rnnstream", "train", "--data", manifest.name]
    assert argv[argv.index("--out") + 1] == f"models/{manifest.name}/{manifest.version}"
    assert argv[argv.index("--version") + 1] == manifest.version
    assert argv[argv.index("--cell") + 1] == manifest.cell
    assert "--seed" in argv
    assert {"torch", "onnx"} <= set(manifest.versions)
    assert manifest.data["rows"] in (data.SEATTLE_ROWS, data.MSFT_ROWS)
    assert set(manifest.feature_recipe) == set(manifest.feature_names)
    assert manifest.config["model"]["hidden_size"] == manifest.hidden_size


def test_recorded_metrics_beat_the_baseline(bundled):
    _, manifest = bundled
    metrics = manifest.metrics
    assert metrics["rmse_ratio"] == pytest.approx(
        metrics["rmse"] / metrics["baseline_rmse"], rel=1e-4
    )
    assert metrics["rmse_ratio"] <= BUNDLED[f"{manifest.name}/{manifest.version}"]
    assert metrics["rmse"] < metrics["baseline_rmse"]
    # The only warning a bundled model may carry: a stronger baseline, named and measured.
    assert manifest.warnings == strongest_baseline_warnings(metrics["baselines"])


CLASSICAL = {
    "seattle-temp": ("sarima", "SARIMA(2,0,1)(1,0,1,24)"),
    "msft-vol": ("garch", "GARCH(1,1)"),
}


def test_every_bundled_model_is_compared_with_what_a_forecaster_tries_first(bundled):
    _, manifest = bundled
    compared = manifest.metrics["baselines"]
    key, spec = CLASSICAL[manifest.name]
    assert compared["classical"] == compared[key]["spec"] == spec
    assert compared["season"] == (24 if manifest.name == "seattle-temp" else 5)
    assert compared["points"] == manifest.metrics["points"]
    assert compared["model_rmse"] == pytest.approx(manifest.metrics["rmse"], rel=1e-5)
    for name in ("persistence", "seasonal_naive", key):
        entry = compared[name]
        assert entry["rmse_ratio"] == pytest.approx(
            compared["model_rmse"] / entry["rmse"], rel=1e-4
        )
    strongest = min(
        (k for k, v in compared.items() if isinstance(v, dict)), key=lambda k: compared[k]["rmse"]
    )
    assert compared["strongest"] == strongest


def test_msft_vol_beats_garch():
    compared = Manifest.load(MODELS / "msft-vol" / "1").metrics["baselines"]
    assert compared["garch"]["rmse_ratio"] < 1.0


def test_seattle_temp_beats_the_same_hour_yesterday_by_a_fifth_and_matches_sarima():
    """The targets, on its own test split and on a city it never saw."""
    metrics = Manifest.load(SEATTLE).metrics
    for compared in (metrics["baselines"], metrics["unseen"]["baselines"]):
        assert compared["seasonal_naive"]["rmse_ratio"] <= 0.8
        assert compared["sarima"]["rmse_ratio"] <= 1.0


@pytest.mark.parametrize("version", ["1", "2"])
def test_seattle_temp_is_also_scored_on_san_francisco_which_it_never_saw(version):
    manifest = Manifest.load(MODELS / "seattle-temp" / version)
    metrics, test = manifest.metrics, manifest.data["split"]["test"]
    unseen = metrics["unseen"]
    assert unseen["data"] == "sf-temp" and unseen["points"] == metrics["points"]
    assert unseen["rows"] == {"start": test["start"], "stop": test["stop"]}  # same position
    compared = unseen["baselines"]
    assert compared["classical"] == "SARIMA(2,0,1)(1,0,1,24)" and compared["season"] == 24
    assert compared["model_rmse"] == pytest.approx(unseen["rmse"], rel=1e-5)
    assert unseen["rmse"] < compared["persistence"]["rmse"]


def test_a_manifest_without_warnings_still_loads(bundled):
    """Manifests written before ``warnings`` existed lack the key: none, not an error."""
    directory, _ = bundled
    raw = json.loads((directory / "manifest.json").read_text())
    raw.pop("warnings", None)
    assert Manifest.from_dict(raw).warnings == []


def step_graph(session: ort.InferenceSession, x: np.ndarray, state_size: int) -> np.ndarray:
    """``x [T, N, F]`` through the step graph from zero states, a step at a time: ``[T, N, O]``."""
    state = np.zeros((x.shape[1], state_size), np.float32)
    ys = []
    for x_t in x:
        y_t, state = session.run(
            ["y", "state_out"], {"x": np.ascontiguousarray(x_t), "state": state}
        )
        ys.append(y_t)
    return np.stack(ys)


def test_the_graph_reproduces_the_recorded_test_metrics(bundled):
    """Recompute the test RMSE by stepping the ONNX graph, the way the server will."""
    directory, manifest = bundled
    window = manifest.config["window"]
    series = data.load(manifest.name, window=window, horizon=manifest.data["horizon"])
    a, b = manifest.data["split"]["test"]["start"], manifest.data["split"]["test"]["stop"]
    session = ort.InferenceSession(
        str(directory / manifest.onnx_file), providers=["CPUExecutionProvider"]
    )
    metrics = manifest.metrics
    if manifest.return_sequences:
        # One session from the row the metrics say (the series' start: the history the
        # baselines use is in the state); a model from before that key streamed the test
        # split alone. Either way, y at every test row.
        first = metrics.get("streamed_from_row", a)
        pred = step_graph(session, series.x[first:b][:, None], manifest.state_size)[a - first :]
        rows = np.arange(a, b)
        if "cold_start" in metrics:  # the test split alone, from a fresh session
            cold = step_graph(session, series.x[a:b][:, None], manifest.state_size)
            rmse = float(
                np.sqrt(np.mean((cold.reshape(-1, manifest.n_outputs) - series.y[rows]) ** 2))
            )
            assert rmse == pytest.approx(metrics["cold_start"]["rmse"], rel=1e-3)
            assert rmse > metrics["rmse"]  # history helps
    else:
        x = data.sequence_windows(series.x[a:b], series.y[a:b], window, 1)[0].transpose(
            1, 0, 2
        )  # [W, N, F]
        pred = step_graph(session, x, manifest.state_size)[-1:]  # [1, N, O]: y at each end
        rows = np.arange(a + window - 1, b)
    pred = pred.reshape(-1, manifest.n_outputs)  # [N, O]
    rmse = float(np.sqrt(np.mean((pred - series.y[rows]) ** 2)))
    baseline = float(np.sqrt(np.mean((series.baseline[rows] - series.y[rows]) ** 2)))
    assert rmse == pytest.approx(metrics["rmse"], rel=1e-3)
    assert baseline == pytest.approx(metrics["baseline_rmse"], rel=1e-4)
    # The naive forecasts by hand: the latest known target, and the one a season earlier.
    horizon, season = manifest.data["horizon"], metrics["baselines"]["season"]
    lag = season * ((horizon - 1) // season + 1)
    for name, back in (("persistence", horizon), ("seasonal_naive", lag)):
        naive = float(np.sqrt(np.mean((series.y[rows - back] - series.y[rows]) ** 2)))
        assert naive == pytest.approx(metrics["baselines"][name]["rmse"], rel=1e-4)


def test_the_default_model_is_what_the_architecture_says():
    manifest = Manifest.load(MODELS / "seattle-temp" / "1")
    assert (manifest.cell, manifest.n_features, manifest.n_outputs) == ("gru", 1, 1)
    assert manifest.return_sequences
    msft = Manifest.load(MODELS / "msft-vol" / "1")
    assert msft.n_features == 2 and not msft.return_sequences


def test_a_manifest_without_warnings_is_written_without_the_key(bundled):
    """Older servers refuse unknown keys: a model with nothing to warn about stays loadable."""
    _, manifest = bundled
    assert ("warnings" in manifest.to_dict()) == bool(manifest.warnings)


def test_the_readme_model_table_shows_the_recorded_numbers(bundled):
    """Every RMSE in a bundled model's row of the README table is the manifest's."""
    _, manifest = bundled
    readme = (MODELS.parent / "README.md").read_text()
    table = readme[readme.index("| model | input per step |") :]
    table = table[: table.index("\n\n")]
    key = f"| `{manifest.name}/{manifest.version}`"  # its row, then its row on an unseen series
    rows = [line for line in table.splitlines() if line.startswith(key)]
    compared = [manifest.metrics["baselines"]]
    if "unseen" in manifest.metrics:
        compared.append(manifest.metrics["unseen"]["baselines"])
    assert len(rows) == len(compared)
    for row, scores in zip(rows, compared, strict=True):
        for name in [k for k, v in scores.items() if isinstance(v, dict)]:
            assert f"{scores[name]['rmse']:.3f}" in row, (name, row)
        assert f"{scores['model_rmse']:.3f}" in row
