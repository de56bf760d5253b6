"""Reading the security files (token file, TLS key and certificates), and saying when they leak.

A file is read whole, and a problem is raised as ``SecretFileError`` in one line that names
the flag and the path, never the content. A secret file that group or others may read gets
a warning (``exposure_warning``): anyone else on the machine could take the key or tokens.
"""

from __future__ import annotations

import stat
from pathlib import Path

#: Permission bits that let someone other than the owner read a file.
READABLE_BY_OTHERS = stat.S_IRGRP | stat.S_IROTH


class SecretFileError(ValueError):
    """A token, certificate or key file that cannot be used; the message names its flag."""


def read_secret_file(path: str, flag: str) -> bytes:
    """The bytes of ``path``; SecretFileError naming ``flag`` when it cannot be read."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SecretFileError(f"{flag} {path}: cannot read it ({exc.strerror})") from None


def exposure_warning(path: str, flag: str) -> str | None:
    """A warning when group or others may read ``path`` (None: only its owner can)."""
    try:
        mode = Path(path).stat().st_mode
    except OSError:
        return None  # reading it reports the problem
    if not mode & READABLE_BY_OTHERS:
        return None
    return (
        f"{flag} {path} is readable by group or others (mode {stat.S_IMODE(mode):04o}): "
        f"anyone on this machine can read the secret in it; chmod 600 {path}"
    )
