"""rnnstream: stateful streaming inference for recurrent sequence models over gRPC.

This package is the client SDK (grpcio, protobuf and numpy only) and the wire contract
(``rnnstream.v1``, generated from ``proto/``). The SDK's names are imported on first use,
so ``import rnnstream`` (and the command line's ``--help``) stays fast.

Example::

    import numpy as np
    import rnnstream

    with rnnstream.Client("localhost:50051") as client:
        with client.session(model="seattle-temp") as session:
            y = session.step([51.2])                    # [n_outputs]
            Y = session.steps(np.array([[50.8], [50.1]]))  # [2, n_outputs]
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from rnnstream.aio import AsyncClient, AsyncSession
    from rnnstream.client import Client, Session
    from rnnstream.errors import (
        DataLossError,
        FailedPreconditionError,
        InvalidArgumentError,
        NotFoundError,
        ResourceExhaustedError,
        RnnstreamError,
        SessionEndedError,
        UnauthenticatedError,
        UnavailableError,
        from_rpc_error,
    )
    from rnnstream.info import ModelInfo, SessionInfo

_EXPORTS: dict[str, str] = {
    "AsyncClient": "rnnstream.aio",
    "AsyncSession": "rnnstream.aio",
    "Client": "rnnstream.client",
    "Session": "rnnstream.client",
    "ModelInfo": "rnnstream.info",
    "SessionInfo": "rnnstream.info",
    "RnnstreamError": "rnnstream.errors",
    "InvalidArgumentError": "rnnstream.errors",
    "NotFoundError": "rnnstream.errors",
    "FailedPreconditionError": "rnnstream.errors",
    "ResourceExhaustedError": "rnnstream.errors",
    "UnavailableError": "rnnstream.errors",
    "SessionEndedError": "rnnstream.errors",
    "DataLossError": "rnnstream.errors",
    "UnauthenticatedError": "rnnstream.errors",
    "from_rpc_error": "rnnstream.errors",
}

__all__ = [
    "AsyncClient",
    "AsyncSession",
    "Client",
    "DataLossError",
    "FailedPreconditionError",
    "InvalidArgumentError",
    "ModelInfo",
    "NotFoundError",
    "ResourceExhaustedError",
    "RnnstreamError",
    "Session",
    "SessionEndedError",
    "SessionInfo",
    "UnauthenticatedError",
    "UnavailableError",
    "__version__",
    "from_rpc_error",
]


def __getattr__(name: str) -> Any:
    """Import an SDK name on first use (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'rnnstream' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
