"""Loading the CUDA libraries and explaining why CUDA did not load, with fake onnxruntimes."""

from __future__ import annotations

import logging
from pathlib import Path
from types import ModuleType

import pytest

from rnnstream.server import cuda_libs
from rnnstream.server.cuda_libs import (
    INSTALL_GPU,
    CudaDevice,
    explain_cuda_failure,
    preload_cuda_libraries,
    query_cuda_device,
)
from rnnstream.server.graph import CUDA, StepGraph, cuda_provider_options, provider_specs
from tests.conftest import TINY


def fake_ort(tmp_path: Path, cuda_provider: bool = True, **attrs: object) -> ModuleType:
    """A module that looks like onnxruntime installed in ``tmp_path``."""
    module = ModuleType("onnxruntime")
    package = tmp_path / "onnxruntime"
    (package / "capi").mkdir(parents=True)
    module.__file__ = str(package / "__init__.py")
    module.__version__ = "1.31.1"  # type: ignore[attr-defined]
    module.cuda_version = "13.0"  # type: ignore[attr-defined]
    if cuda_provider:
        (package / "capi" / cuda_libs.CUDA_PROVIDER_LIBRARY).write_bytes(b"")
        (package / "capi" / cuda_libs.SHARED_PROVIDER_LIBRARY).write_bytes(b"")
    for name, value in attrs.items():
        setattr(module, name, value)
    return module


def test_preload_is_called_and_its_printed_failures_returned(tmp_path):
    calls = []

    def preload() -> None:
        calls.append(1)
        print("Failed to load libcudnn.so.9: cannot open shared object file")
        print("a harmless line")

    assert preload_cuda_libraries(fake_ort(tmp_path, preload_dlls=preload)) == (
        "Failed to load libcudnn.so.9: cannot open shared object file"
    )
    assert calls == [1]


def test_preload_that_succeeds_reports_nothing(tmp_path):
    assert preload_cuda_libraries(fake_ort(tmp_path, preload_dlls=lambda: None)) == ""


def test_preload_absent_says_the_loader_path_must_hold_cuda(tmp_path):
    assert "LD_LIBRARY_PATH" in preload_cuda_libraries(fake_ort(tmp_path))


def test_preload_that_raises_is_reported_not_raised(tmp_path):
    def preload() -> None:
        raise RuntimeError("Invalid parameter of directory")

    assert "Invalid parameter of directory" in preload_cuda_libraries(
        fake_ort(tmp_path, preload_dlls=preload)
    )


def test_the_cpu_package_is_named_with_the_command_that_replaces_it(tmp_path):
    why = explain_cuda_failure(fake_ort(tmp_path, cuda_provider=False), load=lambda name: None)
    assert "CPU package" in why and INSTALL_GPU in why


def test_a_missing_cuda_library_is_named_with_the_install_command(tmp_path):
    def load(name: str) -> None:
        if name.endswith(cuda_libs.CUDA_PROVIDER_LIBRARY):
            raise OSError("libcublasLt.so.13: cannot open shared object file: No such file")

    why = explain_cuda_failure(fake_ort(tmp_path), load=load)
    assert "cannot load libcublasLt.so.13" in why
    assert "CUDA 13.0" in why and INSTALL_GPU in why


def test_a_missing_driver_is_named(tmp_path):
    def load(name: str) -> None:
        if name == cuda_libs.DRIVER_LIBRARY:
            raise OSError("libcuda.so.1: cannot open shared object file")

    why = explain_cuda_failure(fake_ort(tmp_path), load=load)
    assert "libcuda.so.1" in why and "driver" in why


def test_libraries_that_load_point_at_the_gpu_itself(tmp_path):
    why = explain_cuda_failure(fake_ort(tmp_path), load=lambda name: None)
    assert "nvidia-smi" in why


def test_device_query_never_raises_and_says_unknown(tmp_path):
    def load(name: str) -> None:
        raise OSError(f"{name}: cannot open shared object file")

    device = query_cuda_device(fake_ort(tmp_path), load=load)
    assert device == CudaDevice("unknown GPU", "unknown", "unknown", "unknown")


def test_start_line_names_device_and_versions():
    device = CudaDevice("NVIDIA H200", cuda_libs._version(13000), "13.1", "9.14.0")
    assert device.describe() == "NVIDIA H200, CUDA runtime 13.0 (driver 13.1), cuDNN 9.14.0"
    assert cuda_libs._version(91400, cudnn=True) == "9.14.0"


def test_cuda_provider_options_turn_tf32_off_and_graphs_on_when_asked():
    assert cuda_provider_options(cuda_graphs=False) == {"use_tf32": "0"}
    assert cuda_provider_options(cuda_graphs=True) == {
        "use_tf32": "0",
        "enable_cuda_graph": "1",
    }
    assert provider_specs([CUDA, "CPUExecutionProvider"], cuda_graphs=True) == [
        (CUDA, {"use_tf32": "0", "enable_cuda_graph": "1"}),
        "CPUExecutionProvider",
    ]


def test_device_cuda_without_a_cuda_provider_says_why_and_how(tmp_path, monkeypatch):
    import onnxruntime as ort

    if CUDA in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider: tests/gpu covers it")
    directory = tmp_path / "tiny"
    manifest = TINY.write(directory, "tiny", "1")
    with pytest.raises(RuntimeError) as raised:
        StepGraph(directory / "model.onnx", manifest, device="cuda")
    assert "--device cuda" in str(raised.value) and INSTALL_GPU in str(raised.value)


def test_device_auto_on_a_cpu_machine_builds_no_cuda_session_and_no_router(tmp_path, caplog):
    directory = tmp_path / "tiny"
    manifest = TINY.write(directory, "tiny", "1")
    with caplog.at_level(logging.WARNING):
        graph = StepGraph(directory / "model.onnx", manifest, device="auto")
    if graph.provider == CUDA:
        pytest.skip("a GPU is here: tests/gpu covers auto with CUDA")
    assert graph.router is None and graph._cpu is None
    assert not caplog.records  # auto on a CPU machine is no failure
