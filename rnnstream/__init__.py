"""rnnstream: stateful streaming inference for recurrent sequence models over gRPC.

This package is the client SDK (grpcio, protobuf and numpy only) and the wire contract
(``rnnstream.v1``, generated from ``proto/``).
"""

__version__ = "0.1.0"
