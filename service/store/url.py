"""``open_store``: the session store a ``--store`` value names."""

from __future__ import annotations

from pathlib import Path

from rnnstream.server.store.base import SessionStore
from rnnstream.server.store.local_store import FILE_NAME, LocalStore

FORMS = "redis://HOST:PORT/DB (or rediss:// for TLS), or local (SQLite in --state-dir)"


def open_store(url: str, state_dir: str | Path) -> SessionStore:
    """The store for ``url``: ``redis://...``, or ``local``/empty for SQLite in ``state_dir``.

    Nothing is connected yet: ``await store.check()`` verifies it can be reached.
    Raises ValueError naming ``--store`` for a value of another form.
    """
    value = url.strip()
    if value in ("", "local"):
        if not str(state_dir):
            raise ValueError("--store local keeps sessions in --state-dir, which is disabled")
        return LocalStore(Path(state_dir).expanduser() / FILE_NAME)
    if value.startswith(("redis://", "rediss://")):
        # Imported here: a server with the local store needs no redis client.
        from rnnstream.server.store.redis_store import RedisStore

        return RedisStore(value)
    raise ValueError(f"--store {url!r} is not a store this server knows: use {FORMS}")
