"""Settings come from defaults, then RNNSTREAM_* variables, then flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from rnnstream.server.settings import Settings, bundled_models_dir, default_state_dir


def test_defaults_follow_the_architecture():
    s = Settings.from_env({})
    assert (s.host, s.port, s.models) == ("0.0.0.0", 50051, bundled_models_dir())


def test_environment_then_overrides():
    env = {"RNNSTREAM_PORT": "6000", "RNNSTREAM_MODELS": "/m", "RNNSTREAM_IDLE_TTL_S": "1.5"}
    s = Settings.from_env(env, port=7000, host=None)
    assert (s.port, s.models, s.idle_ttl_s, s.host) == (7000, Path("/m"), 1.5, "0.0.0.0")


def test_bad_values_name_the_variable():
    with pytest.raises(ValueError, match="RNNSTREAM_PORT='x' is not a valid int"):
        Settings.from_env({"RNNSTREAM_PORT": "x"})
    with pytest.raises(ValueError, match="device is 'tpu'"):
        Settings.from_env({}, device="tpu")


def test_an_empty_state_dir_variable_disables_snapshots_as_the_flag_does():
    assert Settings.from_env({"RNNSTREAM_STATE_DIR": ""}).snapshot_path is None
    assert Settings.from_env({"RNNSTREAM_PORT": ""}).port == 50051  # empty: unset
    assert Settings.from_env({}).snapshot_path is not None


def test_the_default_state_dir_follows_xdg():
    assert default_state_dir({"XDG_STATE_HOME": "/var/lib/x"}) == "/var/lib/x/rnnstream"
    assert default_state_dir({}) == "~/.local/state/rnnstream"
    assert default_state_dir({"XDG_STATE_HOME": ""}) == "~/.local/state/rnnstream"
