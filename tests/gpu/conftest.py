"""Tests that need an NVIDIA GPU (marker ``cuda``): collected only where CUDA really loads.

Without CUDA nothing here is collected and the run's summary says so in one line.
"""

from __future__ import annotations

import pytest

from bench.gpu_check import cuda_present

CUDA_PRESENT = cuda_present()
collect_ignore_glob = [] if CUDA_PRESENT else ["test_*.py"]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One line when the GPU tests were left out."""
    if not CUDA_PRESENT:
        terminalreporter.write_line(
            "tests/gpu not collected: no CUDA here (onnxruntime-gpu and an NVIDIA GPU needed)"
        )
