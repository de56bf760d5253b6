"""The transport floor: a bare ``grpc.aio`` Predictor that answers Steps with zeros, no model.

It speaks the same ``rnnstream.v1.Predictor/Stream`` protocol as the real server (Open ->
Opened, Steps -> Outputs of ``n_steps * n_outputs`` zeros, End -> Final) and ListModels,
in the same read/write handler style, so the load generator cannot tell it apart. Whatever
rnnstream spends beyond this server's time per message is the price of the model, the
session bookkeeping and the batching.

    python -m bench.echo_server --port 0 --features 8 --outputs 1
"""

from __future__ import annotations

import argparse
import secrets
from collections.abc import AsyncIterator, Sequence

import grpc

from bench import _serve
from rnnstream.v1 import rnnstream_pb2 as pb

_EOF: object = grpc.aio.EOF  # type: ignore[attr-defined]


class EchoServicer(_serve.MinimalPredictor):
    """Predictor without a model: the cost of gRPC, protobuf and asyncio alone."""

    def __init__(self, name: str, n_features: int, n_outputs: int, state_size: int) -> None:
        self.info = pb.ModelInfo(
            name=name,
            version="1",
            n_features=n_features,
            n_outputs=n_outputs,
            state_size=state_size,
            task="forecast",
            cell="none",
            return_sequences=True,
            description="echo: zeros of the right size, no model",
        )
        self.n_features = n_features
        self.n_outputs = n_outputs
        self._replies: dict[int, pb.StreamResponse] = {}

    def _outputs(self, start: int, n_steps: int) -> pb.StreamResponse:
        reply = self._replies.get(n_steps)
        if reply is None:
            reply = pb.StreamResponse(outputs=pb.Outputs(y=[0.0] * (n_steps * self.n_outputs)))
            self._replies[n_steps] = reply
        reply.outputs.start = start
        return reply

    async def Stream(  # type: ignore[override]  # noqa: N802
        self,
        request_iterator: AsyncIterator[pb.StreamRequest],
        context: grpc.aio.ServicerContext[pb.StreamRequest, pb.StreamResponse],
    ) -> None:
        """Open -> Opened, Steps -> zeros, End -> Final; no state but a step counter."""
        steps = 0
        if await self.read_open(context) is None:
            return
        await context.write(
            pb.StreamResponse(
                opened=pb.Opened(
                    session_id=secrets.token_urlsafe(18),
                    model=self.info,
                    return_sequences=True,
                )
            )
        )
        while True:
            request = await context.read()
            if request is _EOF:
                return
            assert isinstance(request, pb.StreamRequest)
            kind = request.WhichOneof("kind")
            if kind == "steps":
                n = len(request.steps.x) // self.n_features
                await context.write(self._outputs(request.steps.start, n))
                steps += n
            elif kind == "end":
                await context.write(
                    pb.StreamResponse(
                        final=pb.Final(steps=steps, y=[0.0] * self.n_outputs, next_step=steps)
                    )
                )
                if request.end.close:
                    return
            else:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unexpected {kind}")


def build(args: argparse.Namespace) -> EchoServicer:
    """The echo servicer, answering for ``--model`` with the widths given."""
    return EchoServicer(args.model, args.features, args.outputs, args.state_size)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.echo_server``."""
    p = _serve.parser("rnnstream.v1.Predictor without a model: the transport floor.")
    p.add_argument("--model", default="bench-gru", help="model name it answers for")
    p.add_argument("--features", type=int, default=8, help="n_features it reports (default 8)")
    p.add_argument("--outputs", type=int, default=1, help="n_outputs per step (default 1)")
    p.add_argument("--state-size", type=int, default=64, help="state_size it reports")
    return _serve.main("echo", argv, build, p)


if __name__ == "__main__":
    raise SystemExit(main())
