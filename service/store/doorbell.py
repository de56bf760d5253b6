"""Doorbells: one process wakes another's inbox reader at once, on one machine.

The local store's inbox is a table that a reader polls; a poll interval short enough for
a quick hand-over would cost every idle process CPU. So a writer that puts a message in
an inbox also rings the addressee's bell: an empty datagram to a Unix socket in Linux's
abstract namespace (no file to create or clean up, gone with the process), named after
the database and the owner. The reader waits for its bell or for the poll interval,
whichever comes first, so a bell that cannot ring (not Linux, processes in different
network namespaces sharing one file) only makes delivery as slow as the poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import sys
from collections.abc import Iterable


def address(scope: str, owner: str) -> str:
    """The abstract socket name of ``owner``'s bell for the store ``scope`` (its file)."""
    digest = hashlib.sha256(f"{scope}\0{owner}".encode()).hexdigest()[:32]
    return "\0rnnstream-inbox-" + digest


def supported() -> bool:
    """Whether this platform has abstract Unix sockets (Linux)."""
    return sys.platform.startswith("linux")


class Bell:
    """The bell of one inbox reader: ``wait`` returns when it rings or at the timeout."""

    def __init__(self, scope: str, owner: str) -> None:
        self._address = address(scope, owner)
        self._socket: socket.socket | None = None
        self._rung = asyncio.Event()

    def __enter__(self) -> Bell:
        """Bind the bell (where supported; else ``wait`` is a plain sleep)."""
        if not supported():
            return self
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(self._address)
        except OSError:
            sock.close()  # another reader of the same inbox holds it: poll only
            return self
        sock.setblocking(False)
        asyncio.get_running_loop().add_reader(sock.fileno(), self._on_ring)
        self._socket = sock
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Unbind the bell."""
        if self._socket is not None:
            asyncio.get_running_loop().remove_reader(self._socket.fileno())
            self._socket.close()
            self._socket = None

    def _on_ring(self) -> None:
        assert self._socket is not None
        with contextlib.suppress(OSError):
            while True:
                self._socket.recv(16)
        self._rung.set()

    async def wait(self, timeout_s: float) -> None:
        """Until the bell rings (rings since the last wait count) or ``timeout_s`` passes."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._rung.wait(), timeout_s)
        self._rung.clear()


class Ringer:
    """Rings other readers' bells; thread-safe, never blocks, never raises."""

    def __init__(self, scope: str) -> None:
        self.scope = scope
        self._socket: socket.socket | None = None  # made at the first ring

    def ring(self, owners: Iterable[str]) -> None:
        """Ring each owner's bell; an owner not listening (or a full queue) is skipped."""
        owners = set(owners)
        if not owners or not supported():
            return
        if self._socket is None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._socket.setblocking(False)
        for owner in owners:
            with contextlib.suppress(OSError):
                self._socket.sendto(b"", address(self.scope, owner))

    def close(self) -> None:
        """Close the sending socket."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None
