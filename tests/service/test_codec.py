"""The codec's fast paths give the same messages as the plain ones."""

from __future__ import annotations

import numpy as np
import pytest

from rnnstream.v1 import rnnstream_pb2 as pb
from service import codec


@pytest.mark.parametrize(
    ("n", "o", "s"), [(1, 1, 0), (3, 2, 4), (256, 1, 0), (40, 3, 64), (2, 300, 0)]
)
def test_outputs_match_the_plain_constructor(n, o, s):
    rng = np.random.default_rng(n)
    y = rng.standard_normal((n, o)).astype(np.float32)
    states = rng.standard_normal((n, s)).astype(np.float32) if s else None
    plain = pb.Outputs(
        start=2**40 + n,
        y=y.ravel().tolist(),
        state=[] if states is None else states.ravel().tolist(),
    )
    fast = codec.outputs(2**40 + n, y, states)
    assert fast == plain
    assert fast.SerializeToString() == plain.SerializeToString()


@pytest.mark.parametrize("n", [0, 1, 47, 48, 49, 3000])
def test_floats_decode_both_paths(n):
    values = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    message = pb.Steps(x=values.tolist())
    decoded = codec._floats(message.x)
    assert decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, values)
