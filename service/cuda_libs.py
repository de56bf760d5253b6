"""The CUDA and cuDNN libraries onnxruntime-gpu needs: load them, say what failed, log the GPU.

onnxruntime-gpu finds CUDA only on the loader path, and onnxruntime falls back to CPU
silently when it does not. ``pip install 'rnnstream[server-gpu]'`` brings the libraries as
pip wheels (``site-packages/nvidia/*/lib``, not on the loader path), so before the first
CUDA session is created the server preloads them (``onnxruntime.preload_dlls()``). When the
provider still does not load, ``explain_cuda_failure`` names the library that failed and
the command that installs it. ``describe_cuda_device`` is the start line: device name,
CUDA runtime, driver and cuDNN versions.

Every function takes the ``onnxruntime`` module (and a library loader) as arguments, so the
logic is tested on CPU with fakes.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

log = logging.getLogger(__name__)

INSTALL_GPU = "pip install 'rnnstream[server-gpu]'"
# The provider's own library; what it links against is what CUDA needs.
CUDA_PROVIDER_LIBRARY = "libonnxruntime_providers_cuda.so"
SHARED_PROVIDER_LIBRARY = "libonnxruntime_providers_shared.so"
DRIVER_LIBRARY = "libcuda.so.1"

Loader = Callable[[str], object]


def _load_global(name: str) -> object:
    """Load ``name`` (dlopen) its symbols visible to what is loaded after it."""
    return ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)


def cuda_build_version(ort: ModuleType) -> str:
    """The CUDA version onnxruntime was built with ("13.0"), or "" for a CPU-only build."""
    return str(getattr(ort, "cuda_version", "") or "")


def preload_cuda_libraries(ort: ModuleType) -> str:
    """Load the CUDA and cuDNN pip libraries into this process; return what went wrong ("" if ok).

    ``preload_dlls`` prints its failures instead of raising; they are captured and
    returned, so the caller logs them once. An onnxruntime without ``preload_dlls`` (older
    than 1.21) relies on the loader path alone.
    """
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return (
            f"onnxruntime {getattr(ort, '__version__', '?')} has no preload_dlls (older than "
            "1.21): the CUDA libraries must be on LD_LIBRARY_PATH"
        )
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            preload()
    except Exception as exc:  # onnxruntime raises RuntimeError, ctypes OSError
        return f"preloading the CUDA libraries failed: {exc}"
    failures = [
        line.strip()
        for line in printed.getvalue().splitlines()
        if "Failed to load" in line or "WARNING" in line
    ]
    return "; ".join(failures)


def explain_cuda_failure(ort: ModuleType, load: Loader = _load_global) -> str:
    """Why the CUDA execution provider cannot load here, naming the library and the fix.

    The provider library is dlopened by hand: the loader's error names the first library
    it needs and cannot find (``libcublasLt.so.13: cannot open shared object file``).
    """
    capi = Path(ort.__file__ or ".").parent / "capi"
    provider = capi / CUDA_PROVIDER_LIBRARY
    if not provider.exists():
        return (
            f"this onnxruntime ({getattr(ort, '__version__', '?')}) has no CUDA provider: it is "
            "the CPU package. Replace it: pip uninstall -y onnxruntime onnxruntime-gpu && "
            + INSTALL_GPU
        )
    cuda = cuda_build_version(ort) or "?"
    try:
        load(DRIVER_LIBRARY)
    except OSError as exc:
        return (
            f"the NVIDIA driver library {DRIVER_LIBRARY} does not load ({exc}): install the "
            "NVIDIA driver (in a container: run it with --gpus all)"
        )
    try:
        shared = capi / SHARED_PROVIDER_LIBRARY
        if shared.exists():
            load(str(shared))
        load(str(provider))
    except OSError as exc:
        missing = str(exc).split(":")[0].strip() or str(exc)
        return (
            f"{CUDA_PROVIDER_LIBRARY} cannot load {missing} ({exc}): onnxruntime-gpu was built "
            f"for CUDA {cuda} and needs its CUDA and cuDNN libraries; install them with "
            f"{INSTALL_GPU} (or pip install 'onnxruntime-gpu[cuda,cudnn]')"
        )
    return (
        f"the CUDA {cuda} libraries load, but onnxruntime did not create a CUDA session: is a "
        "GPU visible (nvidia-smi, CUDA_VISIBLE_DEVICES) and is the driver new enough for "
        f"CUDA {cuda}?"
    )


@dataclass(frozen=True)
class CudaDevice:
    """What the start line says about the GPU: its name and the versions found."""

    name: str
    runtime: str  # CUDA runtime version, "13.0"
    driver: str  # the newest CUDA the driver supports, "13.0"
    cudnn: str  # "9.14.0"

    def describe(self) -> str:
        """``NVIDIA H200, CUDA runtime 13.0 (driver 13.0), cuDNN 9.14.0``."""
        versions = f"CUDA runtime {self.runtime} (driver {self.driver}), cuDNN {self.cudnn}"
        return f"{self.name}, {versions}"


def _version(code: int, cudnn: bool = False) -> str:
    """A CUDA (major*1000 + minor*10) or cuDNN (major*10000 + minor*100 + patch) version."""
    if code <= 0:
        return "unknown"
    if cudnn:
        return f"{code // 10000}.{code % 10000 // 100}.{code % 100}"
    return f"{code // 1000}.{code % 1000 // 10}"


def query_cuda_device(ort: ModuleType, load: Loader = _load_global) -> CudaDevice:
    """Ask the already loaded CUDA runtime and cuDNN for device 0's name and their versions.

    Anything that cannot be asked reads "unknown": the start line must never stop a start.
    """
    major = (cuda_build_version(ort) or "13").split(".")[0]
    name, runtime, driver, cudnn = "unknown GPU", "unknown", "unknown", "unknown"
    with contextlib.suppress(Exception):
        cudart: ctypes.CDLL = load(f"libcudart.so.{major}")  # type: ignore[assignment]
        value = ctypes.c_int(0)
        if cudart.cudaRuntimeGetVersion(ctypes.byref(value)) == 0:
            runtime = _version(value.value)
        if cudart.cudaDriverGetVersion(ctypes.byref(value)) == 0:
            driver = _version(value.value)
        # cudaDeviceProp starts with char name[256]; 8 KiB covers the rest of any version.
        props = ctypes.create_string_buffer(8192)
        get = getattr(cudart, "cudaGetDeviceProperties_v2", None) or cudart.cudaGetDeviceProperties
        if get(props, 0) == 0:
            name = props.value.decode(errors="replace") or name
    with contextlib.suppress(Exception):
        library: ctypes.CDLL = load("libcudnn.so.9")  # type: ignore[assignment]
        library.cudnnGetVersion.restype = ctypes.c_size_t
        cudnn = _version(int(library.cudnnGetVersion()), cudnn=True)
    return CudaDevice(name, runtime, driver, cudnn)
