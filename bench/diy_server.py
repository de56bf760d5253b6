"""The DIY baseline: "onnxruntime in a gRPC server", the way one would hand-roll it.

Same ``rnnstream.v1`` protocol, but no engine: each Steps message runs
``session.run`` on the step graph once per time step, inside the handler, on the event
loop; each stream's state is a numpy row in a dict keyed by session id; no batching
across sessions, no step numbering checks, no replay cache, no limits.

    python -m bench.diy_server --models bench/.cache/models --model bench-gru
"""

from __future__ import annotations

import argparse
import json
import secrets
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort

from bench import _serve
from rnnstream.v1 import rnnstream_pb2 as pb

_EOF: object = grpc.aio.EOF  # type: ignore[attr-defined]


class DiyServicer(_serve.MinimalPredictor):
    """One onnxruntime session, one state row per session, one run() per step."""

    def __init__(self, directory: Path) -> None:
        manifest = json.loads((directory / "manifest.json").read_text())
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(directory / manifest.get("onnx_file", "model.onnx")),
            options,
            providers=["CPUExecutionProvider"],
        )
        self.n_features = int(manifest["n_features"])
        self.n_outputs = int(manifest["n_outputs"])
        self.state_size = int(manifest["state_size"])
        self.info = pb.ModelInfo(
            name=manifest["name"],
            version=manifest["version"],
            n_features=self.n_features,
            n_outputs=self.n_outputs,
            state_size=self.state_size,
            task=manifest.get("task", "forecast"),
            cell=manifest["cell"],
            hidden_size=int(manifest["hidden_size"]),
            layers=int(manifest["layers"]),
            return_sequences=True,
            provider="CPUExecutionProvider",
        )
        self.states: dict[str, np.ndarray] = {}

    async def Stream(  # type: ignore[override]  # noqa: N802
        self,
        request_iterator: AsyncIterator[pb.StreamRequest],
        context: grpc.aio.ServicerContext[pb.StreamRequest, pb.StreamResponse],
    ) -> None:
        """Open -> Opened; Steps -> run every step now; End -> Final."""
        open_ = await self.read_open(context)
        if open_ is None:
            return
        session_id = open_.session_id or secrets.token_urlsafe(18)
        state = self.states.setdefault(session_id, np.zeros((1, self.state_size), dtype=np.float32))
        await context.write(
            pb.StreamResponse(
                opened=pb.Opened(session_id=session_id, model=self.info, return_sequences=True)
            )
        )
        steps = 0
        y = np.zeros((0, self.n_outputs), dtype=np.float32)
        try:
            while True:
                request = await context.read()
                if request is _EOF:
                    return
                assert isinstance(request, pb.StreamRequest)
                kind = request.WhichOneof("kind")
                if kind == "steps":
                    x = np.asarray(request.steps.x, dtype=np.float32).reshape(-1, self.n_features)
                    ys = []
                    for t in range(len(x)):  # one run() per step: the step graph, as exported
                        y_t, state = self.session.run(None, {"x": x[t : t + 1], "state": state})
                        ys.append(y_t)
                    self.states[session_id] = state
                    y = np.concatenate(ys) if ys else y
                    await context.write(
                        pb.StreamResponse(
                            outputs=pb.Outputs(start=request.steps.start, y=y.ravel().tolist())
                        )
                    )
                    steps += len(x)
                elif kind == "end":
                    await context.write(
                        pb.StreamResponse(
                            final=pb.Final(
                                steps=steps, y=y[-1].tolist() if len(y) else [], next_step=steps
                            )
                        )
                    )
                    if request.end.close:
                        return
                else:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unexpected {kind}")
        finally:
            if not open_.session_id:
                self.states.pop(session_id, None)


def build(args: argparse.Namespace) -> DiyServicer:
    """The servicer over the newest version of the model."""
    directories = sorted(p.parent for p in Path(args.models).glob(f"{args.model}/*/manifest.json"))
    if not directories:
        raise SystemExit(f"no {args.model}/<version>/manifest.json under {args.models}")
    return DiyServicer(directories[-1])


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.diy_server``."""
    p = _serve.parser("The DIY baseline: onnxruntime session.run per step inside the handler.")
    p.add_argument("--models", type=Path, required=True, help="model repository")
    p.add_argument("--model", default="bench-gru", help="model name (default bench-gru)")
    return _serve.main("diy", argv, build, p)


if __name__ == "__main__":
    raise SystemExit(main())
