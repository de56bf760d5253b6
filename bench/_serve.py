"""What the benchmark's own servers share: a CLI, the ``serving ... on HOST:PORT`` line, signals."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import grpc

from rnnstream.v1 import rnnstream_pb2 as pb
from rnnstream.v1 import rnnstream_pb2_grpc as pb_grpc

_EOF: object = grpc.aio.EOF  # type: ignore[attr-defined]


class MinimalPredictor(pb_grpc.PredictorServicer):
    """A Predictor of one model that only streams.

    The subclass sets ``info``; ListModels answers with it, and the unary session and
    predict RPCs are UNIMPLEMENTED.
    """

    info: pb.ModelInfo

    async def ListModels(  # noqa: N802 (gRPC method name)
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListModelsResponse:
        """The one model."""
        return pb.ListModelsResponse(models=[self.info], default_model=self.info.name)

    @staticmethod
    async def read_open(
        context: grpc.aio.ServicerContext[pb.StreamRequest, pb.StreamResponse],
    ) -> pb.Open | None:
        """A stream's first message, which must be Open (None: the client left at once)."""
        first = await context.read()
        if first is _EOF:
            return None
        assert isinstance(first, pb.StreamRequest)
        if first.WhichOneof("kind") != "open":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "send Open first")
        return first.open

    async def Predict(  # noqa: N802 (gRPC method name)
        self, request: pb.PredictRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.PredictResponse:
        """Not offered."""
        await _stream_only(context)

    async def GetSession(  # noqa: N802
        self, request: pb.GetSessionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.SessionInfo:
        """Not offered."""
        await _stream_only(context)

    async def DeleteSession(  # noqa: N802
        self, request: pb.DeleteSessionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.DeleteSessionResponse:
        """Not offered."""
        await _stream_only(context)


async def _stream_only(context: grpc.aio.ServicerContext[Any, Any]) -> NoReturn:
    """End an RPC other than Stream with UNIMPLEMENTED."""
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, "benchmark server: Stream only")
    raise AssertionError("abort raises")


def parser(description: str) -> argparse.ArgumentParser:
    """A parser with ``--host`` and ``--port`` (0: a free port), like ``rnnstream serve``."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port (default 0: pick a free one)")
    return p


async def serve(name: str, host: str, port: int, servicer: pb_grpc.PredictorServicer) -> int:
    """Serve ``servicer``, print ``serving NAME on HOST:PORT`` to stderr, run until a signal."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    pb_grpc.add_PredictorServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    print(f"serving {name} on {host}:{bound}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1.0)
    return 0


def main(
    name: str,
    argv: Sequence[str] | None,
    build: Callable[[argparse.Namespace], pb_grpc.PredictorServicer],
    p: argparse.ArgumentParser,
) -> int:
    """Parse ``argv``, build the servicer and serve it until SIGTERM or SIGINT."""
    args = p.parse_args(argv)
    return asyncio.run(serve(name, args.host, args.port, build(args)))
