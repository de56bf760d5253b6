"""Client subcommands: ``rnnstream models`` and ``rnnstream stream``.

Registered by ``rnnstream.cli`` through :func:`add_parser`. The SDK (grpc, numpy) is
imported only when a command runs, so ``rnnstream --help`` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    import numpy as np

    from rnnstream.client import Client, Session
    from rnnstream.info import ModelInfo

ADDRESS_ENV = "RNNSTREAM_ADDRESS"
TOKEN_ENV = "RNNSTREAM_TOKEN"
FALLBACK_ADDRESS = "localhost:50051"

MODELS_EPILOG = """examples:
  rnnstream models
  rnnstream models --address inference.internal:50051
  RNNSTREAM_ADDRESS=10.0.0.5:50051 rnnstream models
  RNNSTREAM_TOKEN=... rnnstream models --address inference.internal:443 --tls-ca ca.pem
"""

STREAM_EPILOG = """examples:
  # hourly temperatures through the default forecaster, one forecast per row
  rnnstream stream --model seattle-temp --csv temps.csv --column temp_f

  # several columns, in the model's feature order, written to a file
  rnnstream stream --model my-sensor --csv log.csv --column ax --column ay --out y.csv

  # one answer for the whole file (many-to-one)
  rnnstream stream --model my-classifier --csv window.csv --many-to-one

  # the hidden state at every step: as numbers, and as a heat map under the series
  rnnstream stream --model seattle-temp --csv temps.csv --state-csv h.csv --plot-state h.png

Without --column the columns named like the model's features are used, else every
column when the file has exactly n_features of them.
"""


class CliError(Exception):
    """A problem to report in one line and exit with status 1."""


def default_address() -> str:
    """``$RNNSTREAM_ADDRESS``, else ``localhost:50051``."""
    return os.environ.get(ADDRESS_ENV) or FALLBACK_ADDRESS


def _add_connection_arguments(parser: argparse.ArgumentParser, timeout: float) -> None:
    """--address, --token, --tls-ca and --timeout: where the server is and how to get in."""
    parser.add_argument(
        "--address",
        default=None,
        help=f"server HOST:PORT (default: ${ADDRESS_ENV}, else {FALLBACK_ADDRESS})",
    )
    parser.add_argument(
        "--token",
        default=None,
        help=f"bearer token for a server with --auth-tokens (default: ${TOKEN_ENV}; the "
        "variable keeps it out of the process list)",
    )
    parser.add_argument(
        "--tls-ca",
        default=None,
        metavar="FILE",
        help="connect over TLS, trusting the CA certificate(s) in FILE (PEM)",
    )
    parser.add_argument("--timeout", type=float, default=timeout, help="seconds per call")


def _connect(args: argparse.Namespace, address: str, max_retries: int) -> Client:
    """A client for ``address`` with the token and TLS the arguments ask for."""
    from rnnstream.client import Client

    root_certificates = None
    if args.tls_ca:
        try:
            with open(args.tls_ca, "rb") as pem:
                root_certificates = pem.read()
        except OSError as exc:
            raise CliError(f"cannot read --tls-ca {args.tls_ca}: {exc.strerror}") from exc
    try:
        return Client(
            address,
            timeout=args.timeout,
            max_retries=max_retries,
            token=args.token or os.environ.get(TOKEN_ENV) or None,
            tls=root_certificates is not None,
            root_certificates=root_certificates,
        )
    except ValueError as exc:
        raise CliError(f"--token / ${TOKEN_ENV}: {exc}") from exc


def add_parser(subparsers: Any) -> None:
    """Register ``models`` and ``stream`` on the top-level subparsers."""
    models = subparsers.add_parser(
        "models",
        help="list the models a server serves",
        description=(
            "List the models a server serves: shapes (F inputs, O outputs, S state slots),\n"
            "cell, task, default mode, and WARM-UP: how many readings a new session should\n"
            "be sent first, the length of a delay line in its state (--taps; 0: none)."
        ),
        epilog=MODELS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_connection_arguments(models, timeout=10.0)
    models.set_defaults(func=run_models)

    stream = subparsers.add_parser(
        "stream",
        help="stream a CSV's columns through one session",
        description=(
            "Stream the rows of a CSV file, as time steps, through one session of a model "
            "and print y_t for every step as CSV (step, then the model's output names); "
            "many-to-one prints the final y only."
        ),
        epilog=STREAM_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    stream.add_argument("--model", required=True, help="model name (empty: server default)")
    stream.add_argument("--version", default="", help="model version (default: latest)")
    stream.add_argument("--csv", required=True, metavar="FILE", help="input CSV with a header")
    stream.add_argument(
        "--column",
        action="append",
        default=None,
        metavar="C",
        help="input column, repeat in the model's feature order",
    )
    stream.add_argument("--out", default=None, metavar="FILE", help="write CSV here, not stdout")
    stream.add_argument("--chunk", type=int, default=64, metavar="N", help="steps per message")
    stream.add_argument(
        "--many-to-one",
        action="store_true",
        help="y only at the end of the file (default: the model's mode)",
    )
    _add_connection_arguments(stream, timeout=30.0)
    stream.add_argument(
        "--state-csv",
        default=None,
        metavar="FILE",
        help="also write the recurrent state after every step here: a header, then one row "
        "per step of state_size columns (h per layer, then c for an LSTM, then lag{j} per "
        "slot of a delay line)",
    )
    stream.add_argument(
        "--plot-state",
        default=None,
        metavar="OUT.png",
        help="also draw the input, the predictions and the state units over time as a heat "
        "map, similar units side by side (needs matplotlib: pip install 'rnnstream[train]')",
    )
    stream.set_defaults(func=run_stream)


def _fail(message: str) -> int:
    print(f"rnnstream: error: {message}", file=sys.stderr)
    return 1


def _explain(error: Exception, address: str) -> str:
    from rnnstream.errors import UnavailableError

    if isinstance(error, UnavailableError):
        return (
            f"cannot reach an rnnstream server at {address} ({error.details}); start one with "
            f"`rnnstream serve`, or pass --address / set ${ADDRESS_ENV}"
        )
    return str(error)


def run_models(args: argparse.Namespace) -> int:
    """``rnnstream models``: a table of the server's models."""
    from rnnstream.errors import RnnstreamError

    address = args.address or default_address()
    try:
        with _connect(args, address, max_retries=1) as client:
            infos = client.models()
            default = client.default_model()
    except CliError as exc:
        return _fail(str(exc))
    except RnnstreamError as exc:
        return _fail(_explain(exc, address))
    # WARM-UP: the readings a new session should be sent first (a delay line's length).
    header = ["NAME", "VERSION", "CELL", "F", "O", "S", "TASK", "MODE", "WARM-UP"]
    rows = [
        [
            info.name + (" *" if info.name == default else ""),
            info.version,
            f"{info.cell}x{info.layers}" if info.layers > 1 else info.cell,
            str(info.n_features),
            str(info.n_outputs),
            str(info.state_size),
            info.task,
            "many-to-many" if info.return_sequences else "many-to-one",
            str(info.taps),
        ]
        for info in infos
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    if not infos:
        print("(no models)")
    elif default:
        print("* default model")
    return 0


def _columns(header: Sequence[str], wanted: Sequence[str] | None, info: ModelInfo) -> list[int]:
    """Indices of the input columns in ``header``."""
    f = info.n_features
    if wanted:
        missing = [c for c in wanted if c not in header]
        if missing:
            raise CliError(
                f"column {', '.join(missing)} is not in the CSV header ({', '.join(header)})"
            )
        if len(wanted) != f:
            raise CliError(
                f"model {info.key} takes {f} feature{'s' if f != 1 else ''} "
                f"({', '.join(info.feature_names) or 'unnamed'}), got {len(wanted)} --column"
            )
        return [header.index(c) for c in wanted]
    if info.feature_names and all(name in header for name in info.feature_names):
        return [header.index(name) for name in info.feature_names]
    if len(header) == f:
        return list(range(f))
    raise CliError(
        f"cannot tell which of the CSV's columns ({', '.join(header)}) are the model's "
        f"{f} feature{'s' if f != 1 else ''} ({', '.join(info.feature_names) or 'unnamed'}): "
        "pass --column for each, in order"
    )


def _delete_quietly(session: Session) -> None:
    from rnnstream.errors import RnnstreamError

    with contextlib.suppress(RnnstreamError):  # else it ends at the server's idle TTL
        session.delete()


def _read_rows(reader: Iterator[list[str]], columns: list[int], path: str) -> Iterator[list[float]]:
    for line_no, row in enumerate(reader, start=2):
        if not row:
            continue
        try:
            yield [float(row[i]) for i in columns]
        except (ValueError, IndexError) as exc:
            raise CliError(f"{path}, line {line_no}: cannot read a number: {exc}") from exc


def _batches(rows: Iterator[list[float]], size: int) -> Iterator[list[list[float]]]:
    batch: list[list[float]] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _write_state(
    args: argparse.Namespace,
    info: ModelInfo,
    x: np.ndarray,
    y: np.ndarray,
    chunks: list[np.ndarray],
) -> None:
    """The session's states ``[T, S]`` to ``--state-csv`` and ``--plot-state``."""
    import numpy as np

    from rnnstream.state_view import plot_state, state_columns, write_state_csv

    if sum(len(c) for c in chunks) != len(x):
        raise CliError("the server did not return a state for every step")
    states = np.concatenate(chunks)  # [T, S]
    columns = state_columns(info)
    units = info.cell_units
    line = f" (the {info.taps}-step delay line of inputs is in --state-csv)" if info.taps else ""
    try:
        if args.state_csv:
            write_state_csv(Path(args.state_csv), states, columns)
        if args.plot_state:
            plot_state(
                Path(args.plot_state),
                x,
                [
                    info.feature_names[i] if i < len(info.feature_names) else f"x{i}"
                    for i in range(info.n_features)
                ],
                y,
                info.output_columns(),
                states[:, :units],
                columns[:units],
                f"{info.key}: {Path(args.csv).name}, {len(states)} steps" + line,
            )
    except OSError as exc:
        raise CliError(f"cannot write the state: {exc}") from exc


def run_stream(args: argparse.Namespace) -> int:
    """``rnnstream stream``: a CSV's rows through one session, y_t out as CSV."""
    import numpy as np

    from rnnstream.errors import RnnstreamError

    address = args.address or default_address()
    if args.chunk < 1:
        return _fail(f"--chunk must be at least 1, got {args.chunk}")
    # Per-step states come with per-step answers, so a session that returns states runs
    # many-to-many; what is printed still follows the mode asked for.
    want_state = bool(args.state_csv or args.plot_state)
    if args.plot_state:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            from rnnstream.state_view import MISSING_MATPLOTLIB

            return _fail(MISSING_MATPLOTLIB)
    try:
        with ExitStack() as stack:
            try:
                source: TextIO = stack.enter_context(open(args.csv, newline=""))
            except OSError as exc:
                raise CliError(f"cannot read {args.csv}: {exc.strerror}") from exc
            reader = csv.reader(source)
            header = [h.strip() for h in next(reader, [])]
            if not header:
                raise CliError(f"{args.csv} is empty: expected a header row, then one row per step")
            client = stack.enter_context(_connect(args, address, max_retries=2))
            session = client.session(
                args.model,
                args.version,
                return_sequences=True if want_state else (False if args.many_to_one else None),
                return_state=want_state,
                chunk_size=args.chunk,
            )
            stack.callback(_delete_quietly, session)  # one-shot: free it on the server now
            info = session.model
            columns = _columns(header, args.column, info)
            out: TextIO = (
                stack.enter_context(open(args.out, "w", newline="")) if args.out else sys.stdout
            )
            writer = csv.writer(out)
            outputs = info.output_columns()
            many = session.return_sequences
            if want_state:
                many = not args.many_to_one and info.return_sequences
            writer.writerow(["step", *outputs] if many else outputs)
            n = 0
            xs: list[np.ndarray] = []
            ys: list[np.ndarray] = []
            states: list[np.ndarray] = []
            for batch in _batches(_read_rows(reader, columns, args.csv), args.chunk):
                x = np.asarray(batch, dtype=np.float32)
                y = session.steps(x)
                if many:
                    for i, row in enumerate(y):
                        writer.writerow([n + i, *(f"{v:.7g}" for v in row)])
                if want_state:
                    xs.append(x)
                    ys.append(y)
                    if session.states is not None:
                        states.append(session.states)
                n += len(batch)
            if n == 0:
                raise CliError(f"{args.csv} has a header but no rows")
            if not many:
                last = ys[-1][-1] if want_state else session.end()  # y of the last step
                writer.writerow([f"{v:.7g}" for v in last])
            out.flush()
            if want_state:
                _write_state(args, info, np.concatenate(xs), np.concatenate(ys), states)
    except CliError as exc:
        return _fail(str(exc))
    except ValueError as exc:  # the SDK's client-side input checks
        return _fail(f"{args.csv}: {exc}")
    except RnnstreamError as exc:
        return _fail(_explain(exc, address))
    return 0
