"""``rnnstream serve``: run the gRPC server over a model repository.

Every ``Settings`` field is a flag (``--max-sessions``) and an environment variable
(``RNNSTREAM_MAX_SESSIONS``); flags win. Imports nothing heavy until the command runs.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import get_type_hints

EPILOG = """\
examples:
  rnnstream serve                                  # bundled models on 0.0.0.0:50051
  rnnstream serve --models ./models --port 6000
  RNNSTREAM_PORT=6000 RNNSTREAM_LOG_FORMAT=json rnnstream serve

  rnnstream serve --tls-cert server.pem --tls-key server.key --auth-tokens tokens.txt
  OTEL_TRACES_EXPORTER=console rnnstream serve --otel   # spans on stdout

Health: grpc.health.v1 (service "" and "rnnstream.v1.Predictor"), open without a token;
reflection is on unless --no-reflection, so `grpcurl -plaintext localhost:50051 list`
shows the API. SIGTERM drains and exits 0; SIGHUP re-reads the token and TLS files.
"""


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``serve``."""
    from rnnstream.server.settings import ENV_PREFIX, Settings

    parser = subparsers.add_parser(
        "serve",
        help="serve models over gRPC (stateful streaming sessions)",
        description="Serve every model under --models over gRPC, one session per stream.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    hints = get_type_hints(Settings)
    for f in dataclasses.fields(Settings):
        kind = hints[f.name]
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{Settings.help(f.name)} (env {ENV_PREFIX}{f.name.upper()})"
        if kind is bool:  # --reflection / --no-reflection
            parser.add_argument(
                flag,
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
            continue
        parser.add_argument(
            flag,
            dest=f.name,
            type=kind if kind in (int, float, Path) else str,
            default=None,
            metavar=f.name.upper(),
            help=help_text,
        )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build the settings, configure logging and serve until a signal."""
    import asyncio
    import logging

    from rnnstream.server import logs, tracing
    from rnnstream.server.repository import ModelLoadError
    from rnnstream.server.secret_files import SecretFileError
    from rnnstream.server.server import Server
    from rnnstream.server.settings import Settings
    from rnnstream.server.store import StoreError
    from rnnstream.server.supervisor import Supervisor, worker_count

    fields = {f.name for f in dataclasses.fields(Settings)}
    try:
        settings = Settings.from_env(**{k: v for k, v in vars(args).items() if k in fields})
    except ValueError as exc:
        print(f"rnnstream serve: {exc}")
        return 2
    logs.configure(settings.log_level, settings.log_format, settings.worker)
    try:
        tracing.check(settings.otel)  # here, not once per worker
    except tracing.TracingError as exc:
        logging.getLogger("rnnstream").error("%s", exc)
        return 1
    if worker_count(settings.workers) > 1:
        return Supervisor(settings).run()
    try:
        return asyncio.run(Server(settings).serve())
    except (ModelLoadError, OSError, StoreError, SecretFileError, tracing.TracingError) as exc:
        logging.getLogger("rnnstream").error("%s", exc)
        return 1
