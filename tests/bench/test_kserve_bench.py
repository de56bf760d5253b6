"""The load generator through the KServe v2 stream: the harness system rnnstream-kserve."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from bench.harness import systems
from bench.kserve import KServeProtocol
from rnnstream import loadgen


@pytest.mark.parametrize(("model", "window"), [("tiny", 1), ("tiny-m2o", 3)])
def test_sequences_over_the_kserve_stream_end_their_sessions(
    server: object, model: str, window: int
) -> None:
    sessions = server.running.sessions  # type: ignore[attr-defined]
    before = len(sessions)
    spec = loadgen.LoadSpec(
        target=server.address,  # type: ignore[attr-defined]
        streams=3,
        messages=5,
        window=window,
        steps_per_message=4,
        warmup_s=0,
        model=model,
    )
    result = loadgen.run(spec, KServeProtocol())
    assert result.errors == 0, result.error_messages
    assert result.timesteps == 3 * 5 * 4
    assert len(sessions) == before  # sequence_end ended every sequence


def test_unknown_model_is_a_load_error(server: object) -> None:
    spec = loadgen.LoadSpec(target=server.address, messages=1, model="nope")  # type: ignore[attr-defined]
    with pytest.raises(loadgen.LoadError, match="nope"):
        loadgen.run(spec, KServeProtocol())


def test_the_harness_offers_the_same_server_over_kserve(tiny_models: Path) -> None:
    offered = systems.available(tiny_models, "tiny", ["--max-batch", "8"])
    kserve = offered["rnnstream-kserve"]
    assert kserve.command == offered["rnnstream"].command
    assert pickle.loads(pickle.dumps(kserve.protocol))().name == "rnnstream-kserve"
