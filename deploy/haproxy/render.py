"""Write the shipped HAProxy config pointed at other replicas and another listen address.

``python -m deploy.haproxy.render --bind 127.0.0.1:8080 --replica 10.0.0.5:50051 ...``
prints ``deploy/haproxy/haproxy.cfg`` with its listener bound to ``--bind`` and its backend's
server lines replaced by one line per ``--replica``, in the order given (the order fixes a
replica's place on the hash ring). Everything else (routing, health checks, timeouts) is the
shipped file's, so what the tests run is what is deployed.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

SHIPPED = Path(__file__).resolve().parent / "haproxy.cfg"
FRONTEND = "grpc"
BACKEND = "rnnstream"

_SECTION = re.compile(r"^(global|defaults|frontend|backend|listen|resolvers|peers)\b\s*(\S*)")
_BIND = re.compile(r"^(\s+bind\s+)(\S+)(.*)$")
_SERVER = re.compile(r"^\s+server\s")


def render(replicas: Sequence[str], bind: str, config: str | None = None) -> str:
    """``config`` (the shipped file by default) listening on ``bind``, serving ``replicas``."""
    if not replicas:
        raise ValueError("at least one replica is needed")
    text = SHIPPED.read_text() if config is None else config
    out: list[str] = []
    section = ("", "")
    binds = servers = 0
    for line in text.splitlines():
        match = _SECTION.match(line)
        if match:
            section = (match.group(1), match.group(2))
        if section == ("frontend", FRONTEND) and (bind_match := _BIND.match(line)):
            binds += 1
            line = f"{bind_match.group(1)}{bind}{bind_match.group(3)}"
        elif section == ("backend", BACKEND) and _SERVER.match(line):
            servers += 1
            if servers == 1:
                out += [f"    server {BACKEND}-{i} {a}" for i, a in enumerate(replicas)]
            continue
        out.append(line)
    if binds != 1 or servers == 0:
        raise ValueError(
            f"expected one bind line in frontend {FRONTEND} and server lines in backend "
            f"{BACKEND}; found {binds} and {servers}"
        )
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: print the rendered config."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind", default=":50051", help="listen address, [host]:port")
    parser.add_argument(
        "--replica", action="append", required=True, help="host:port of a replica (repeat)"
    )
    args = parser.parse_args(argv)
    sys.stdout.write(render(args.replica, args.bind))
    return 0


if __name__ == "__main__":
    sys.exit(main())
