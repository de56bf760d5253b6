"""Test certificates made with the openssl command: a CA, a server and client certificates."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)


@dataclass(frozen=True)
class Pair:
    """A certificate and its key, as files."""

    cert: Path
    key: Path

    def pem(self) -> tuple[bytes, bytes]:
        return self.cert.read_bytes(), self.key.read_bytes()


def make_ca(folder: Path, name: str) -> Pair:
    folder.mkdir(parents=True, exist_ok=True)
    pair = Pair(folder / f"{name}.pem", folder / f"{name}.key")
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", pair.key, "-out", pair.cert, "-days", "2", "-subj", f"/CN={name}",
    )  # fmt: skip
    return pair


def make_signed(ca: Pair, folder: Path, name: str, cn: str, server: bool = False) -> Pair:
    """A certificate for ``cn`` signed by ``ca`` (a server one also names 127.0.0.1)."""
    pair = Pair(folder / f"{name}.pem", folder / f"{name}.key")
    request = folder / f"{name}.csr"
    _openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", pair.key, "-out", request, "-subj", f"/CN={cn}",
    )  # fmt: skip
    extensions = folder / f"{name}.ext"
    usage = "serverAuth" if server else "clientAuth"
    lines = [f"extendedKeyUsage={usage}"]
    if server:
        lines.append("subjectAltName=IP:127.0.0.1,DNS:localhost")
    extensions.write_text("\n".join(lines) + "\n")
    _openssl(
        "x509", "-req", "-in", request, "-CA", ca.cert, "-CAkey", ca.key, "-CAcreateserial",
        "-out", pair.cert, "-days", "2", "-extfile", extensions,
    )  # fmt: skip
    pair.key.chmod(0o600)
    return pair
