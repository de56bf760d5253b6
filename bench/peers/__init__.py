"""Peer systems (Triton, TorchServe): set-up scripts, launchers and load-generator adapters."""
