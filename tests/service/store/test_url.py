"""``open_store``: which store a --store value names, and a clear refusal otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest

from rnnstream.server.store import open_store
from rnnstream.server.store.local_store import LocalStore
from rnnstream.server.store.redis_store import RedisStore, redacted


@pytest.mark.parametrize("url", ["", "local", " local "])
def test_local_is_sqlite_in_the_state_dir(url: str, tmp_path: Path) -> None:
    store = open_store(url, tmp_path)
    assert isinstance(store, LocalStore)
    assert store.path == tmp_path / "sessions.sqlite3"


def test_local_needs_a_state_dir() -> None:
    with pytest.raises(ValueError, match="--state-dir"):
        open_store("local", "")


def test_redis_url() -> None:
    store = open_store("redis://127.0.0.1:6379/2", "")
    assert isinstance(store, RedisStore) and store.url == "redis://127.0.0.1:6379/2"


@pytest.mark.parametrize("url", ["memcached://host:11211", "postgres://x/y", "redis:/nope", "/tmp"])
def test_unknown_scheme_names_the_flag_and_the_forms(url: str) -> None:
    with pytest.raises(ValueError, match="--store") as info:
        open_store(url, "/tmp")
    message = str(info.value)
    assert "redis://HOST:PORT/DB" in message and "local" in message and "\n" not in message


def test_passwords_stay_out_of_messages() -> None:
    assert redacted("redis://user:secret@h:6379/0") == "redis://user:***@h:6379/0"
    assert redacted("redis://h:6379/0") == "redis://h:6379/0"
