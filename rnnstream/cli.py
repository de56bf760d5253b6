"""The ``rnnstream`` console script: one command, one subcommand per job.

Each subcommand lives beside the code it drives (``rnnstream.server.cli`` serves,
``rnnstream.export.cli`` trains, ``rnnstream.export.diagnose_cli`` measures a written
model's gradient through time, ``rnnstream.cli_client`` streams and lists models,
``rnnstream.cli_bench`` loads a server) and registers itself through ``add_parser``. They are
imported directly, by their names under ``rnnstream``: a user's own ``service.py`` or
``export.py`` next to where the command runs can never stand in for them. Those modules
import nothing heavy at import time, so ``--help`` is fast and a serving install without
torch can still show every subcommand.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rnnstream import cli_bench, cli_client
from rnnstream.export import cli as train_cli
from rnnstream.export import diagnose_cli
from rnnstream.server import cli as serve_cli

# Each exposes add_parser(subparsers), which sets `func` on its parser.
SUBCOMMANDS = (serve_cli, train_cli, diagnose_cli, cli_client, cli_bench)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="rnnstream",
        description=(
            "Stateful streaming inference for recurrent sequence models. An RNN summarises "
            "a variable-length prefix x_1..x_t in a fixed-size state h_t; rnnstream keeps "
            "h_t per session on the server and streams x_t in, y_t out."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    result = func(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
