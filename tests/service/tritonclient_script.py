"""Run by test_tritonclient in a virtual environment of its own (tritonclient needs protobuf<7).

``python tritonclient_script.py ADDRESS IN.json OUT.json``: IN holds ``unary`` (a [T, F]
sequence) and ``sequences`` ({name: {"id": int or str, "chunks": [[T, F], ...]}}); OUT gets
what the server said: liveness, metadata, the unary y, and each sequence's y per chunk.
Only tritonclient's public API is used, as a user's application would.
"""

from __future__ import annotations

import json
import queue
import sys
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as triton  # type: ignore[import-not-found]


def _input(x: np.ndarray) -> Any:
    tensor = triton.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x.astype(np.float32))
    return tensor


def main() -> None:
    address, in_path, out_path = sys.argv[1:4]
    spec = json.loads(Path(in_path).read_text())
    client = triton.InferenceServerClient(url=address)
    out: dict[str, Any] = {"live": client.is_server_live(), "ready": client.is_server_ready()}
    metadata = client.get_model_metadata("tiny", as_json=True)
    out["metadata"] = {
        "inputs": [[t["name"], t["datatype"]] for t in metadata["inputs"]],
        "outputs": [[t["name"], t["datatype"]] for t in metadata["outputs"]],
    }
    result = client.infer("tiny", [_input(np.array(spec["unary"], np.float32))])
    out["unary"] = result.as_numpy("y").tolist()

    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    sequences = spec["sequences"]
    rounds = max(len(s["chunks"]) for s in sequences.values())
    sent = 0
    for i in range(rounds):  # interleaved: one chunk of each sequence per round
        for name, sequence in sequences.items():
            chunks = sequence["chunks"]
            if i >= len(chunks):
                continue
            client.async_stream_infer(
                "tiny",
                [_input(np.array(chunks[i], np.float32))],
                request_id=f"{name}/{i}",
                sequence_id=sequence["id"],
                sequence_start=i == 0,
                sequence_end=i == len(chunks) - 1,
            )
            sent += 1
    got: dict[str, Any] = {}
    for _ in range(sent):
        result, error = answers.get(timeout=60)
        if error is not None:
            raise SystemExit(f"stream error: {error}")
        got[result.get_response().id] = result.as_numpy("y").tolist()
    client.stop_stream()
    client.close()
    out["sequences"] = got
    Path(out_path).write_text(json.dumps(out))


if __name__ == "__main__":
    main()
