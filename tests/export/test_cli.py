"""``rnnstream train`` end to end on synthetic data, in-process and as a subprocess."""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rnnstream.cli import main
from rnnstream.export import cli as train_cli
from rnnstream.manifest import Manifest, sha256_file

REPO = Path(__file__).resolve().parents[2]
# --no-classical-baseline: the seasonal ARIMA fit would take tens of seconds.
QUICK = ["--data", "synthetic", "--hidden", "8", "--epochs", "2", "--window", "24"]
QUICK += ["--no-classical-baseline", "--quiet"]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    train_cli.add_parser(parser.add_subparsers())
    return parser.parse_args(argv)


@pytest.mark.slow
def test_train_writes_a_verified_model_and_a_command_that_reproduces_it(tmp_path: Path):
    out = tmp_path / "models" / "synth" / "1"
    plots = tmp_path / "img"
    assert (
        main(
            [
                "train",
                *QUICK,
                "--cell",
                "lstm",
                "--tbptt",
                "8",
                "--out",
                str(out),
                "--plots",
                str(plots),
            ]
        )
        == 0
    )
    manifest = Manifest.load(out)
    assert (manifest.name, manifest.version, manifest.cell) == ("synthetic", "1", "lstm")
    assert (manifest.n_features, manifest.n_outputs, manifest.state_size) == (2, 1, 16)
    assert manifest.onnx_sha256 == sha256_file(out / "model.onnx")
    assert manifest.config["train"]["tbptt"] == 8 and manifest.config["model"]["hidden_size"] == 8
    # Truncation caps how far back training's gradient went; the record says so.
    assert manifest.metrics["gradient_flow"]["reach"] == 8
    horizon = manifest.metrics["memory_horizon"]
    assert isinstance(horizon, int) and horizon <= 8
    assert {"rmse", "baseline_rmse", "rmse_ratio", "mae", "baseline_mae"} <= set(manifest.metrics)
    assert manifest.data["split"]["test"]["rows"] == 600
    assert sorted(p.name for p in plots.iterdir()) == [
        "synthetic-clipping.png",
        "synthetic-gradients.png",
        "synthetic-hidden.png",
        "synthetic-loss.png",
        "synthetic-predictions.png",
    ]
    assert all(p.stat().st_size > 1000 for p in plots.iterdir())
    # The recorded command, run again (to another directory), gives the same bytes.
    argv = shlex.split(manifest.command)
    assert argv[:4] == ["rnnstream", "train", "--data", "synthetic"]
    again = tmp_path / "again"
    argv[argv.index("--out") + 1] = str(again)
    argv[argv.index("--plots") + 1] = str(tmp_path / "img2")
    assert main([*argv[1:], "--quiet"]) == 0
    assert sha256_file(again / "model.onnx") == manifest.onnx_sha256


@pytest.mark.slow
def test_train_runs_as_a_subprocess(tmp_path: Path):
    out = tmp_path / "m" / "1"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rnnstream.cli",
            "train",
            *QUICK[:-1],
            "--cell",
            "rnn",
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "persistence" in proc.stdout and "model / baseline" in proc.stdout
    assert "seasonal naive (24)" in proc.stdout and "SARIMA" not in proc.stdout
    assert Manifest.load(out).cell == "rnn"


def test_train_on_a_csv(tmp_path: Path):
    path = tmp_path / "levels.csv"
    path.write_text(
        "t,level,rain\n" + "\n".join(f"{i},{(i % 17) * 0.3},{i % 5}" for i in range(300)) + "\n"
    )
    out = tmp_path / "levels" / "1"
    argv = [
        "train",
        "--data",
        str(path),
        "--features",
        "level,rain",
        "--targets",
        "level",
        "--horizon",
        "2",
    ]
    assert (
        main(
            [
                *argv,
                "--cell",
                "gru",
                "--hidden",
                "4",
                "--epochs",
                "1",
                "--window",
                "16",
                "--quiet",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    manifest = Manifest.load(out)
    assert manifest.feature_names == ["level", "rain"] and manifest.output_names == ["level_next_2"]
    # Two steps ahead: persistence only (no time stamps, no season; no one-step ARIMA).
    compared = manifest.metrics["baselines"]
    assert [k for k, v in compared.items() if isinstance(v, dict)] == ["persistence"]
    assert compared["persistence"]["rmse"] == pytest.approx(manifest.metrics["baseline_rmse"])
    assert "--features level,rain --targets level" in manifest.command


def test_a_model_worse_than_its_baseline_is_written_with_a_warning(tmp_path: Path, capsys):
    """A drifting random walk, where persistence is hard to beat, and a deliberately
    under-trained tiny network: one epoch of two hidden units, far worse than persistence."""
    rng = np.random.default_rng(0)
    level = 0.5 * np.arange(300) + np.cumsum(rng.standard_normal(300))
    path = tmp_path / "walk.csv"
    path.write_text("level\n" + "\n".join(f"{v:.4f}" for v in level) + "\n")
    out = tmp_path / "walk" / "1"
    argv = ["train", "--data", str(path), "--targets", "level", "--cell", "gru"]
    argv += ["--hidden", "2", "--epochs", "1", "--window", "16", "--out", str(out)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    manifest = Manifest.load(out)
    assert manifest.metrics["rmse_ratio"] > 1
    warning, *others = manifest.warnings
    assert warning.startswith("the model is worse than the naive baseline (persistence)")
    assert f"RMSE {manifest.metrics['rmse']:.4g} vs {manifest.metrics['baseline_rmse']:.4g}" in (
        warning
    )
    assert "more --epochs" in warning
    # The classical model (ARIMA, no season without time stamps) is stronger still.
    assert manifest.metrics["baselines"]["classical"] == "ARIMA(2,0,1)"
    assert [w.split(",")[0] for w in others] == [
        "the model is not better than the strongest baseline"
    ]
    assert captured.err.strip() == "\n".join(
        f"rnnstream train: warning: {w}" for w in manifest.warnings
    )
    assert "warning" not in captured.out
    # Every file written is named, and only those.
    wrote = [
        line.split(" ", 1)[1] for line in captured.out.splitlines() if line.startswith("wrote")
    ]
    assert sorted(wrote) == sorted(str(p) for p in out.iterdir())
    assert {Path(p).name for p in wrote} == {"model.onnx", "sequence.onnx", "manifest.json"}


def test_help_explains_bptt_truncation_and_clipping(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for needle in (
        "--tbptt",
        "--clip",
        "--no-classical-baseline",
        "--residual",
        "--lr-schedule",
        "--level-shift",
        "--taps",
        "--solve-readout",
        "backpropagation through time",
        "detached",
        "seattle-temp",
        "examples:",
    ):
        assert needle in text


def test_bad_data_is_an_error_not_a_traceback(tmp_path: Path, capsys):
    code = main(
        [
            "train",
            "--data",
            "nowhere",
            "--cell",
            "gru",
            "--hidden",
            "4",
            "--epochs",
            "1",
            "--out",
            str(tmp_path / "x"),
        ]
    )
    assert code == 1
    assert "neither a dataset" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_without_torch_it_says_which_extra_to_install(monkeypatch, capsys):
    args = parse(["train", "--data", "synthetic", "--out", "unused"])
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    assert args.func(args) == 2
    assert "pip install 'rnnstream[train]'" in capsys.readouterr().err


def test_cli_module_imports_nothing_heavy():
    heavy = "('torch', 'onnx', 'pandas', 'matplotlib')"
    code = f"import sys, rnnstream.export.cli; print(any(m in sys.modules for m in {heavy}))"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert proc.stdout.strip() == "False"
