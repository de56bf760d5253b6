"""Sessions belong to their principal on a real server with tokens, through both protocols:
another principal's resume, read or delete is NOT_FOUND and changes nothing; the KServe v2
service authenticates like the native one."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

import rnnstream
from rnnstream.kserve import grpc_service_pb2 as kpb
from rnnstream.kserve import grpc_service_pb2_grpc as kpb_grpc
from tests.security.conftest import ALICE_TOKEN, BOB_TOKEN, write_tokens


def test_another_principal_cannot_resume_read_or_delete_and_the_owner_continues(
    start_server, tmp_path
):
    tokens = write_tokens(tmp_path / "tokens", f"alice {ALICE_TOKEN}\nbob {BOB_TOKEN}\n")
    server = start_server("--auth-tokens", str(tokens))
    x = np.random.default_rng(3).standard_normal((8, 2)).astype(np.float32)
    with (
        rnnstream.Client(server.address, token=ALICE_TOKEN, timeout=10) as alice,
        rnnstream.Client(server.address, token=BOB_TOKEN, timeout=10) as bob,
    ):
        with alice.session("tiny") as session:
            first = session.steps(x[:4])
            sid = session.id
        before = alice.get_session(sid)
        assert before.next_step == 4
        with pytest.raises(rnnstream.NotFoundError) as missing:
            bob.get_session("no-such-session-0000000000")
        for attempt in (
            lambda: bob.get_session(sid),
            lambda: bob.session(session_id=sid),
            lambda: bob.delete_session(sid),
        ):
            with pytest.raises(rnnstream.NotFoundError) as refused:
                attempt()
            # The same answer as for an id nobody has: nothing says the session exists.
            assert str(refused.value).replace(sid, "ID") == str(missing.value).replace(
                "no-such-session-0000000000", "ID"
            )
        assert alice.get_session(sid).next_step == 4
        with alice.session(session_id=sid) as session:
            rest = session.steps(x[4:])
        with alice.session("tiny") as reference:
            want = reference.steps(x)
        np.testing.assert_array_equal(np.concatenate([first, rest]), want)


def test_kserve_v2_refuses_a_caller_without_a_token(start_server, tmp_path):
    tokens = write_tokens(tmp_path / "tokens", f"alice {ALICE_TOKEN}\n")
    server = start_server("--auth-tokens", str(tokens))
    request = kpb.ModelInferRequest(model_name="tiny")
    request.inputs.add(name="x", datatype="FP32", shape=[3, 2])
    request.raw_input_contents.append(np.zeros((3, 2), "<f4").tobytes())
    with grpc.insecure_channel(server.address) as channel:
        stub = kpb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(request, timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as streamed:
            list(stub.ModelStreamInfer(iter([request]), timeout=10))
        assert streamed.value.code() == grpc.StatusCode.UNAUTHENTICATED
        answer = stub.ModelInfer(
            request, timeout=10, metadata=(("authorization", f"Bearer {ALICE_TOKEN}"),)
        )
        assert answer.outputs[0].name == "y"
        assert stub.ServerLive(kpb.ServerLiveRequest(), timeout=10).live  # a probe stays open
