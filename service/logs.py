"""Logging set-up for the server: readable text by default, one JSON object a line on request."""

from __future__ import annotations

import json
import logging
import sys


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, and any ``extra`` fields."""

    _standard = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message"}

    def format(self, record: logging.LogRecord) -> str:
        """Render the record as a JSON line."""
        data = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        data.update({k: v for k, v in vars(record).items() if k not in self._standard})
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


class _WorkerField(logging.Filter):
    """Adds ``worker`` (the worker's number under a supervisor) to every record."""

    def __init__(self, worker: int) -> None:
        super().__init__()
        self.worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        """Tag the record; never drops it."""
        record.worker = self.worker
        return True


def configure(level: str, fmt: str, worker: int = 0) -> None:
    """Send the server's logs to stderr at ``level`` in ``fmt`` (text or json).

    A worker of a supervisor (``worker`` > 0) tags its lines: ``[worker 2]`` in text, a
    ``worker`` field in JSON, so the interleaved logs of several workers can be told apart.
    """
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        tag = f" [worker {worker}]" if worker else ""
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s{tag} %(name)s: %(message)s")
        )
    if worker:
        handler.addFilter(_WorkerField(worker))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
