"""Server configuration: one typed ``Settings`` built from ``RNNSTREAM_*`` variables and flags.

Every field ``foo_bar`` is read from ``RNNSTREAM_FOO_BAR`` and can be overridden by the
``--foo-bar`` flag of ``rnnstream serve``. Nothing else in the server reads ``os.environ``,
except ``tracing`` (with ``--otel``), which follows the standard ``OTEL_*`` variables.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

ENV_PREFIX = "RNNSTREAM_"
#: The shortest token ``--auth-tokens`` accepts.
MIN_TOKEN_CHARS = 16
#: How a yes/no setting may be written in its variable.
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def bundled_models_dir() -> Path:
    """The ``models/`` folder shipped beside the code (the repository or the image)."""
    return Path(__file__).resolve().parent.parent / "models"


@dataclass(frozen=True)
class Settings:
    """Everything the server can be told; see the README's configuration table."""

    models: Path = field(
        default_factory=bundled_models_dir,
        metadata={"help": "model repository: <name>/<version>/{model.onnx,manifest.json}"},
    )
    host: str = field(default="0.0.0.0", metadata={"help": "address to listen on"})
    port: int = field(default=50051, metadata={"help": "gRPC port (0: pick a free one)"})
    default_model: str = field(
        default="seattle-temp",
        metadata={"help": "model an empty Open.model selects (first model if absent)"},
    )
    device: str = field(
        default="auto",
        metadata={
            "help": "auto (CUDA when it really loads, each call on CPU or CUDA by the cost "
            "measured at start; else CPU), cuda or cpu"
        },
    )
    max_sessions: int = field(
        default=100_000,
        metadata={
            "help": "sessions per model; at the limit the least recently used idle "
            "session is evicted, or Open is refused with RESOURCE_EXHAUSTED"
        },
    )
    idle_ttl_s: float = field(
        default=600.0,
        metadata={
            "help": "seconds a session without a stream waits to be resumed "
            "(a client may ask for another value in Open.idle_ttl_s)"
        },
    )
    max_idle_ttl_s: float = field(
        default=86_400.0, metadata={"help": "longest idle TTL a client may ask for"}
    )
    max_streams: int = field(
        default=10_000, metadata={"help": "most live streams at once; more are refused"}
    )
    max_sessions_per_principal: int = field(
        default=0,
        metadata={
            "help": "sessions one principal (an authenticated client; without authentication "
            "every caller is one) may hold in this process; more are refused with "
            "RESOURCE_EXHAUSTED, never made room for by evicting another's (0: unlimited)"
        },
    )
    max_streams_per_principal: int = field(
        default=0,
        metadata={
            "help": "live streams one principal may hold in this process; more are refused "
            "with RESOURCE_EXHAUSTED (0: unlimited)"
        },
    )
    max_pending_requests: int = field(
        default=10_000,
        metadata={
            "help": "calls that arrived but no handler has picked up yet (a reconnect storm); "
            "past this grpc core refuses a growing share of new calls (INTERNAL 'Internal "
            "error from Core'; the SDK retries it at Open), past twice this every one"
        },
    )
    state_dir: str = field(
        default_factory=lambda: default_state_dir(os.environ),
        metadata={
            "help": "where sessions are snapshotted at shutdown and restored at start "
            "(default $XDG_STATE_HOME/rnnstream, else ~/.local/state/rnnstream; "
            "empty: keep nothing across restarts)",
            # A text setting: so RNNSTREAM_STATE_DIR= disables it, as --state-dir '' does.
            "empty_means_none": True,
        },
    )
    snapshot_interval_s: float = field(
        default=0.0,
        metadata={
            "help": "also snapshot every N seconds, bounding what a crash loses (0: off); "
            "with --store: checkpoint changed sessions to the store every N seconds"
        },
    )
    store: str = field(
        default="",
        metadata={
            "help": "session store shared by processes, so sessions move between them: "
            "redis://HOST:PORT/DB (replicas), or local (SQLite in --state-dir: the workers "
            "of one machine); empty: none (--workers N > 1 use local)",
            "empty_means_none": True,
        },
    )
    lease_ttl_s: float = field(
        default=5.0,
        metadata={
            "help": "seconds a process's leases last unless it beats again (with --store; "
            "one heartbeat keeps them all): how long a session of a dead process waits to move"
        },
    )
    metrics_port: int = field(
        default=0, metadata={"help": "serve Prometheus metrics on this HTTP port (0: off)"}
    )
    max_batch: int = field(
        default=512, metadata={"help": "most sessions run in one onnxruntime call"}
    )
    inline_max_steps: int = field(
        default=64,
        metadata={
            "help": "requests of at most this many session-steps run on the event loop "
            "(batched per loop iteration) instead of the engine thread; 0: never"
        },
    )
    max_steps_per_message: int = field(
        default=65_536, metadata={"help": "most time steps in one Steps or Predict message"}
    )
    max_message_bytes: int = field(
        default=16 * 1024 * 1024, metadata={"help": "largest gRPC message accepted"}
    )
    replay_steps: int = field(
        default=64,
        metadata={"help": "outputs kept per session to answer retransmitted steps"},
    )
    intra_op_threads: int = field(
        default=1, metadata={"help": "onnxruntime intra-op threads per model"}
    )
    grace_s: float = field(
        default=10.0, metadata={"help": "seconds in-flight work may take when draining"}
    )
    write_grace_s: float = field(
        default=5.0,
        metadata={
            "help": "seconds a stream that was ended (deleted, superseded, draining) may "
            "take to finish a reply its client is slow to read; then it is cut off"
        },
    )
    workers: str = field(
        default="1",
        metadata={
            "help": "worker processes serving the port together (auto: one per core); "
            "a supervisor restarts any that dies and drains them all on SIGTERM"
        },
    )
    worker: int = field(
        default=0,
        metadata={
            "help": "set by the supervisor: this process is worker N of --workers and "
            "shares the port with the others (SO_REUSEPORT); 0: a server of its own"
        },
    )
    tls_cert: str = field(
        default="",
        metadata={
            "help": "certificate chain (PEM) of the port: it speaks TLS only (with --tls-key); "
            "re-read on SIGHUP",
            "empty_means_none": True,
        },
    )
    tls_key: str = field(
        default="",
        metadata={
            "help": "private key (PEM) of --tls-cert; keep it mode 600; re-read on SIGHUP",
            "empty_means_none": True,
        },
    )
    tls_client_ca: str = field(
        default="",
        metadata={
            "help": "CA certificates (PEM): clients must present a certificate signed by one "
            "(mutual TLS); its subject common name (CN) is the caller's principal",
            "empty_means_none": True,
        },
    )
    auth_tokens: str = field(
        default="",
        metadata={
            "help": "file of PRINCIPAL TOKEN lines: calls must send 'authorization: Bearer "
            f"TOKEN' (tokens of {MIN_TOKEN_CHARS}+ characters); re-read on SIGHUP",
            "empty_means_none": True,
        },
    )
    reflection: bool = field(
        default=True,
        metadata={"help": "serve gRPC server reflection (--no-reflection: off)"},
    )
    otel: bool = field(
        default=False,
        metadata={
            "help": "OpenTelemetry tracing: a span per RPC and per session step batch, "
            "exported as the standard OTEL_* variables say (OTEL_TRACES_EXPORTER: otlp, "
            "console or none; OTEL_EXPORTER_OTLP_ENDPOINT; OTEL_SERVICE_NAME); needs "
            "pip install 'rnnstream[otel]'"
        },
    )
    log_level: str = field(default="INFO", metadata={"help": "DEBUG, INFO, WARNING, ERROR"})
    log_format: str = field(default="text", metadata={"help": "text or json"})

    def __post_init__(self) -> None:
        problems = []
        if self.device not in ("auto", "cuda", "cpu"):
            problems.append(f"device is {self.device!r}: use auto, cuda or cpu")
        if self.log_format not in ("text", "json"):
            problems.append(f"log_format is {self.log_format!r}: use text or json")
        for name in (
            "max_sessions",
            "max_batch",
            "max_steps_per_message",
            "intra_op_threads",
            "max_streams",
            "max_pending_requests",
        ):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1")
        if self.workers != "auto" and not (self.workers.isdigit() and int(self.workers) >= 1):
            problems.append(f"workers is {self.workers!r}: use a positive number or auto")
        if self.worker < 0:
            problems.append("worker must be 0 (a server of its own) or a worker's number")
        if not 0 <= self.port <= 65535:
            problems.append(f"port {self.port} is outside 0..65535")
        if not 0 < self.idle_ttl_s <= self.max_idle_ttl_s:
            problems.append("idle_ttl_s must be positive and at most max_idle_ttl_s")
        if not self.write_grace_s > 0:
            problems.append("write_grace_s must be positive")
        if not self.lease_ttl_s > 0:
            problems.append("lease_ttl_s must be positive")
        if self.snapshot_interval_s < 0:
            problems.append("snapshot_interval_s must be 0 (off) or positive")
        if not 0 <= self.metrics_port <= 65535:
            problems.append(f"metrics_port {self.metrics_port} is outside 0..65535")
        if self.inline_max_steps < 0:
            problems.append("inline_max_steps must be 0 or more")
        if self.replay_steps < 0:
            problems.append("replay_steps must be 0 or more")
        for name in ("max_sessions_per_principal", "max_streams_per_principal"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be 0 (unlimited) or more")
        if bool(self.tls_cert) != bool(self.tls_key):
            problems.append("tls_cert and tls_key go together: pass both or neither")
        if self.tls_client_ca and not self.tls_cert:
            problems.append("tls_client_ca needs TLS: pass tls_cert and tls_key too")
        if problems:
            raise ValueError("invalid settings: " + "; ".join(problems))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then ``RNNSTREAM_*`` variables, then ``overrides`` (None means unset).

        An empty variable counts as unset, except for settings where empty means "none"
        (``RNNSTREAM_STATE_DIR=``: no snapshots).
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None and (raw != "" or f.metadata.get("empty_means_none")):
                values[f.name] = _parse(cls, f.name, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @property
    def snapshot_path(self) -> Path | None:
        """The session snapshot file, or None when nothing is kept across restarts."""
        if not self.state_dir:
            return None
        return Path(self.state_dir).expanduser() / "sessions.snapshot.npz"

    @classmethod
    def help(cls, name: str) -> str:
        """The help text of one field."""
        return str(next(f for f in dataclasses.fields(cls) if f.name == name).metadata["help"])


def default_state_dir(environ: Mapping[str, str]) -> str:
    """``$XDG_STATE_HOME/rnnstream``, else ``~/.local/state/rnnstream`` (XDG base dirs)."""
    base = environ.get("XDG_STATE_HOME") or "~/.local/state"
    return str(Path(base) / "rnnstream")


def _parse(cls: type[Settings], name: str, raw: str) -> Any:
    """Convert an environment string to the field's type, naming the variable on failure."""
    kind = get_type_hints(cls)[name]
    try:
        if kind is Path:
            return Path(raw)
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
        if kind is bool:
            return parse_bool(raw)
        return raw
    except ValueError as exc:
        raise ValueError(
            f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid {kind.__name__}"
        ) from exc


def parse_bool(raw: str) -> bool:
    """A yes/no variable: 1, true, yes, on or 0, false, no, off (any case)."""
    word = raw.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(f"{raw!r} is not one of {', '.join(TRUE_WORDS + FALSE_WORDS)}")
