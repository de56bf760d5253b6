"""The codec's fast paths give the same arrays as the plain ones."""

from __future__ import annotations

import numpy as np
import pytest

from rnnstream.server import codec
from rnnstream.v1 import rnnstream_pb2 as pb


@pytest.mark.parametrize("n", [0, 1, 47, 48, 49, 3000])
def test_floats_decode_both_paths(n):
    values = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    message = pb.Steps(x=values.tolist())
    decoded = codec._floats(message.x)
    assert decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, values)
