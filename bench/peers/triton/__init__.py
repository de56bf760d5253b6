"""Triton Inference Server (from the nvidia-pytriton wheel) serving the bench GRU."""
