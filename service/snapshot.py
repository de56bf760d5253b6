"""Session snapshots: every session's state row and bookkeeping in one file, written atomically.

The file is a numpy ``.npz`` (no pickle): per model version, columnar arrays of session
ids, state rows, step counters, flags and the cached outputs used for retransmissions,
plus a JSON header naming each model version and the sha256 of the graph the states
belong to, and (format 2) the principal each session belongs to. It is written to a
temporary file, fsynced, and renamed over the old one, so a crash mid-write leaves the
previous snapshot intact.

A snapshot where every session belongs to principal "" (a server without authentication)
is written in format 1, without the principals, so servers from before principals read
it; both formats are read, format 1 as principal "".
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FORMAT = 2
# Format 1 has no principals column: every session of it belongs to principal "".
READABLE_FORMATS = (1, 2)


@dataclass
class SessionRecord:
    """Everything needed to bring one session back exactly where it was."""

    session_id: str
    state: np.ndarray  # [S]
    next_step: int
    sequence_steps: int
    return_sequences: bool
    return_state: bool
    idle_ttl_s: float
    age_s: float
    replay_start: int
    replay_y: np.ndarray | None  # [r, O]
    replay_states: np.ndarray | None  # [r, S]
    principal: str = ""  # who the session belongs to ("" without authentication)


@dataclass
class ModelSessions:
    """The sessions of one model version, with the graph identity their states belong to."""

    model: str
    version: str
    onnx_sha256: str
    n_outputs: int
    state_size: int
    records: list[SessionRecord] = field(default_factory=list)


def write(path: Path, groups: list[ModelSessions]) -> int:
    """Write a snapshot atomically (temp file, fsync, rename); returns the session count."""
    arrays: dict[str, np.ndarray] = {}
    principals = any(r.principal for g in groups for r in g.records)
    header = {"format": FORMAT if principals else 1, "written_at": time.time(), "groups": []}
    for g, group in enumerate(groups):
        header["groups"].append(  # type: ignore[attr-defined]
            {
                "model": group.model,
                "version": group.version,
                "onnx_sha256": group.onnx_sha256,
                "n_outputs": group.n_outputs,
                "count": len(group.records),
            }
        )
        arrays.update(_columns(f"g{g}_", group))
        if principals:
            arrays[f"g{g}_principals"] = np.array([r.principal for r in group.records], dtype=str)
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".snapshot-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return sum(len(g.records) for g in groups)


def _columns(prefix: str, group: ModelSessions) -> dict[str, np.ndarray]:
    """Columnar arrays of one group's records."""
    records, o, s = group.records, group.n_outputs, group.state_size
    n = len(records)
    empty_y = np.zeros((0, o), np.float32)
    empty_s = np.zeros((0, s), np.float32)
    return {
        prefix + "ids": np.array([r.session_id for r in records], dtype=str),
        prefix + "state": np.array([r.state for r in records], np.float32).reshape(n, s),
        prefix + "ints": np.array(
            [[r.next_step, r.sequence_steps, r.replay_start] for r in records], np.int64
        ).reshape(n, 3),
        prefix + "flags": np.array(
            [[r.return_sequences, r.return_state] for r in records], bool
        ).reshape(n, 2),
        prefix + "floats": np.array([[r.idle_ttl_s, r.age_s] for r in records], np.float64).reshape(
            n, 2
        ),
        prefix + "replay_len": np.array(
            [0 if r.replay_y is None else len(r.replay_y) for r in records], np.int64
        ),
        prefix + "replay_y": np.concatenate(
            [empty_y] + [r.replay_y for r in records if r.replay_y is not None]
        ),
        prefix + "replay_states_len": np.array(
            [0 if r.replay_states is None else len(r.replay_states) for r in records], np.int64
        ),
        prefix + "replay_states": np.concatenate(
            [empty_s] + [r.replay_states for r in records if r.replay_states is not None]
        ),
    }


def read(path: Path) -> tuple[float, list[ModelSessions]]:
    """Read a snapshot: when it was written, and its sessions by model version."""
    with np.load(path, allow_pickle=False) as data:
        header = json.loads(bytes(data["header"]).decode())
        if header.get("format") not in READABLE_FORMATS:
            raise ValueError(
                f"{path}: snapshot format {header.get('format')}, expected one of "
                f"{', '.join(map(str, READABLE_FORMATS))}"
            )
        groups = []
        for g, meta in enumerate(header["groups"]):
            p = f"g{g}_"
            state = data[p + "state"]
            group = ModelSessions(
                meta["model"],
                meta["version"],
                meta["onnx_sha256"],
                meta["n_outputs"],
                state.shape[1],
            )
            replay_y = np.split(data[p + "replay_y"], np.cumsum(data[p + "replay_len"])[:-1])
            replay_s = np.split(
                data[p + "replay_states"], np.cumsum(data[p + "replay_states_len"])[:-1]
            )
            ids = data[p + "ids"]
            principals = data[p + "principals"] if p + "principals" in data else [""] * len(ids)
            for i, session_id in enumerate(ids):
                ints, flags, floats = (
                    data[p + "ints"][i],
                    data[p + "flags"][i],
                    data[p + "floats"][i],
                )
                group.records.append(
                    SessionRecord(
                        session_id=str(session_id),
                        state=state[i].copy(),
                        next_step=int(ints[0]),
                        sequence_steps=int(ints[1]),
                        return_sequences=bool(flags[0]),
                        return_state=bool(flags[1]),
                        idle_ttl_s=float(floats[0]),
                        age_s=float(floats[1]),
                        replay_start=int(ints[2]),
                        replay_y=replay_y[i] if len(replay_y[i]) else None,
                        replay_states=replay_s[i] if len(replay_s[i]) else None,
                        principal=str(principals[i]),
                    )
                )
            groups.append(group)
    return float(header["written_at"]), groups
