"""Typed views of what the server says about models and sessions (plain frozen dataclasses)."""

from __future__ import annotations

from dataclasses import dataclass

from rnnstream.v1 import rnnstream_pb2 as pb


@dataclass(frozen=True)
class ModelInfo:
    """One served model version: its shapes, task and default mode.

    Example::

        info = client.models()[0]
        info.name, info.n_features, info.n_outputs   # ("seattle-temp", 1, 1)
        info.return_sequences                         # True: y every step by default
    """

    name: str
    version: str
    n_features: int
    n_outputs: int
    state_size: int
    task: str = "forecast"
    labels: tuple[str, ...] = ()
    feature_names: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()
    cell: str = ""
    layers: int = 0
    hidden_size: int = 0
    return_sequences: bool = True
    description: str = ""
    provider: str = ""

    @classmethod
    def from_proto(cls, msg: pb.ModelInfo) -> ModelInfo:
        """Build from the wire message."""
        return cls(
            name=msg.name,
            version=msg.version,
            n_features=msg.n_features,
            n_outputs=msg.n_outputs,
            state_size=msg.state_size,
            task=msg.task or "forecast",
            labels=tuple(msg.labels),
            feature_names=tuple(msg.feature_names),
            output_names=tuple(msg.output_names),
            cell=msg.cell,
            layers=msg.layers,
            hidden_size=msg.hidden_size,
            return_sequences=msg.return_sequences,
            description=msg.description,
            provider=msg.provider,
        )

    @property
    def key(self) -> str:
        """``name/version``."""
        return f"{self.name}/{self.version}"

    @property
    def cell_units(self) -> int:
        """The slots of a state row the recurrent cell holds: ``k * L * H`` (``k = 2``: LSTM).

        The whole row when the server does not say the cell's layout, or when the rest of
        the row is not a whole number of input rows (so it cannot be a delay line).
        """
        units = (2 if self.cell == "lstm" else 1) * self.layers * self.hidden_size
        rest = self.state_size - units
        if units < 1 or rest < 0 or rest % max(self.n_features, 1):
            return self.state_size
        return units

    @property
    def taps(self) -> int:
        """``K``: how many past inputs the state row holds exactly after the cell's slots.

        A model trained with ``--taps K`` (a delay line) forecasts from ``K`` made-up
        inputs at the start of a session: send it the last ``K`` readings first. 0 for a
        model without one, or when the server does not say the layout.
        """
        return (self.state_size - self.cell_units) // max(self.n_features, 1)

    def output_columns(self) -> list[str]:
        """Names for the outputs: ``output_names``, else ``labels``, else ``y0, y1, ...``."""
        if len(self.output_names) == self.n_outputs:
            return list(self.output_names)
        if len(self.labels) == self.n_outputs:
            return list(self.labels)
        return [f"y{i}" for i in range(self.n_outputs)]


@dataclass(frozen=True)
class SessionInfo:
    """Where a session stands on the server (``GetSession``).

    Example::

        info = client.get_session(session.id)
        info.next_step, info.live, info.idle_ttl_s
    """

    session_id: str
    next_step: int
    model: str
    version: str
    age_s: float
    idle_s: float
    live: bool
    sequence_steps: int
    idle_ttl_s: float

    @classmethod
    def from_proto(cls, msg: pb.SessionInfo) -> SessionInfo:
        """Build from the wire message."""
        return cls(
            session_id=msg.session_id,
            next_step=msg.next_step,
            model=msg.model,
            version=msg.version,
            age_s=msg.age_s,
            idle_s=msg.idle_s,
            live=msg.live,
            sequence_steps=msg.sequence_steps,
            idle_ttl_s=msg.idle_ttl_s,
        )
