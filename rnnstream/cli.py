"""The ``rnnstream`` console script: one command, one subcommand per job.

Each subcommand lives beside the code it drives (``service.cli`` serves, ``export.cli``
trains, ``rnnstream.cli_client`` streams and lists models, ``rnnstream.cli_bench`` loads a
server) and registers itself through
``add_parser``. Those modules import nothing heavy at import time, so ``--help`` is fast
and a serving install without torch can still show every subcommand.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# subcommand module -> each exposes add_parser(subparsers) that sets `func` on its parser.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "service.cli",
    "export.cli",
    "rnnstream.cli_client",
    "rnnstream.cli_bench",
)


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
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:  # a package left out of this install
            continue
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
