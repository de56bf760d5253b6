"""The README's configuration table lists every setting, flag and variable alike."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from rnnstream.server.settings import ENV_PREFIX, Settings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_every_setting_is_in_the_configuration_table() -> None:
    rows = [line for line in README.splitlines() if line.startswith("| `--")]
    missing = []
    for f in dataclasses.fields(Settings):
        flag, env = f"`--{f.name.replace('_', '-')}`", f"{ENV_PREFIX}{f.name.upper()}"
        if not any(flag in row and env in row for row in rows):
            missing.append(f.name)
    assert not missing, f"add these settings to the README's configuration table: {missing}"
