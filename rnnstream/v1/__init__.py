"""Generated gRPC stubs of proto/rnnstream/v1 (``make proto``); do not edit."""
