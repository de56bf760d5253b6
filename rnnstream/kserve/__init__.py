"""Generated gRPC stubs of proto/rnnstream/kserve (``make proto``); do not edit.

Triton's ``inference.GRPCInferenceService`` (KServe v2, the Open Inference Protocol, with
Triton's streaming and sequence extensions), which the server also speaks.
"""
