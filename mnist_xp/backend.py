"""Device selection: a Backend pairs an Array API namespace with the device it computes on.

The rest of the package never asks which library it runs on; it asks the Backend to move host
arrays in (`asarray`), results out (`to_numpy`) and to wait for queued work (`synchronize`).
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass, field
from typing import Any

import array_api_compat
import numpy as np

from .errors import BackendError, UsageError


class CupyMissing(BackendError):
    """CuPy is not installed."""

CUPY_HINT = 'pip install "mnist-xp[cuda12]" (or "mnist-xp[cuda13]" for CUDA 13)'


def _compat_namespace(xp: Any) -> Any:
    """The array_api_compat wrapper for NumPy, CuPy and torch; any other namespace as given."""
    if array_api_compat.is_numpy_namespace(xp):
        import array_api_compat.numpy as wrapped
    elif array_api_compat.is_cupy_namespace(xp):
        import array_api_compat.cupy as wrapped
    elif array_api_compat.is_torch_namespace(xp):
        import array_api_compat.torch as wrapped
    else:
        return xp
    return wrapped


def _library_name(xp: Any) -> str:
    """'numpy', 'cupy', 'torch', 'array_api_strict', ...: the library behind a namespace."""
    name = xp.__name__.removeprefix("array_api_compat.")
    return name.split(".")[0]


def _library_version(library: str) -> str:
    module = __import__(library)
    return getattr(module, "__version__", "")


@dataclass(frozen=True)
class Backend:
    """An Array API namespace and a device: `Backend(array_api_strict, Device("device1"))`.

    `note` says why this backend was chosen when `select_backend("auto")` picked it.
    """

    xp: Any
    device: Any
    name: str = ""
    note: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "xp", _compat_namespace(self.xp))
        if not self.name:
            library = self.library
            name = f"{library} {_library_version(library)} on {self.device}"
            object.__setattr__(self, "name", name)

    @property
    def library(self) -> str:
        return _library_name(self.xp)

    @property
    def is_cupy(self) -> bool:
        return array_api_compat.is_cupy_namespace(self.xp)

    @property
    def device_name(self) -> str:
        """'cpu', 'cuda:0', ...: the device as --device spells it where it can."""
        return f"cuda:{self.device.id}" if self.is_cupy else str(self.device)

    @property
    def on_gpu(self) -> bool:
        return self.is_cupy or getattr(self.device, "type", None) == "cuda"

    @property
    def default_chunk_rows(self) -> int | None:
        """Rows per chunk of a full-batch step: 2048 on a CPU, where chunk-sized temporaries
        stay in cache (measured: ~10% faster per step than one pass), None (one pass) on a GPU,
        where each extra chunk costs kernel launches."""
        return None if self.on_gpu else 2048

    @property
    def out_of_memory_errors(self) -> tuple[type[BaseException], ...]:
        """The exceptions this library raises when device memory runs out."""
        if self.is_cupy:
            import cupy

            return (cupy.cuda.memory.OutOfMemoryError,)
        if array_api_compat.is_torch_namespace(self.xp):
            import torch

            return (torch.OutOfMemoryError,)
        return (MemoryError,)

    @property
    def tail(self) -> Any:
        """The element-wise kernels of a step (nn.Tail): CuPy's fused ones, unless the
        environment sets MNIST_XP_FUSED=0; the Array API reference everywhere else."""
        from .nn import ARRAY_API_TAIL

        if self.is_cupy and os.environ.get("MNIST_XP_FUSED", "1") != "0":
            from .fused import cupy_tail

            return cupy_tail()
        return ARRAY_API_TAIL

    def activate(self) -> contextlib.AbstractContextManager:
        """Make this device current. CuPy's creation functions ignore `device=` and use the
        current device, so work on cuda:N runs inside `with backend.activate():`."""
        return self.device if self.is_cupy else contextlib.nullcontext()

    def asarray(self, host: Any, dtype: Any = None) -> Any:
        """Copy a host array (or nested sequence) to this device."""
        with self.activate():
            return self.xp.asarray(host, dtype=dtype, device=self.device)

    def to_numpy(self, array: Any) -> np.ndarray:
        """Copy a device array back to a NumPy array on the host."""
        if array_api_compat.is_numpy_array(array):
            return np.asarray(array)
        if array_api_compat.is_cupy_array(array):
            return array.get()
        if array_api_compat.is_torch_array(array):
            return array.detach().cpu().numpy()
        host_device = self.xp.__array_namespace_info__().default_device()
        return np.asarray(self.xp.asarray(array, device=host_device))

    def synchronize(self) -> None:
        """Wait until all queued work on the device has finished (a no-op on the CPU)."""
        if self.is_cupy:
            self.device.synchronize()
        elif array_api_compat.is_torch_namespace(self.xp) and self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)

    def __str__(self) -> str:
        return self.name


def numpy_backend(note: str = "") -> Backend:
    """NumPy on the host CPU."""
    return Backend(np, "cpu", name=f"numpy {np.__version__} on cpu", note=note)


def cuda_backend(index: int = 0) -> Backend:
    """CuPy on CUDA device `index`; BackendError says why when that is impossible."""
    try:
        import cupy
    except ImportError:
        raise CupyMissing(f"--device cuda needs CuPy: {CUPY_HINT}") from None
    except Exception as exc:  # a broken CuPy install raises more than ImportError
        raise BackendError(f"CuPy is installed but failed to import: {exc}") from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no driver, driver too old, no device node, ...
        raise BackendError(f"CuPy found no usable CUDA GPU: {exc}") from None
    if count == 0 or not cupy.is_available():
        raise BackendError("CuPy found no usable CUDA GPU (0 devices visible)")
    if index >= count:
        raise BackendError(f"cuda:{index} does not exist: CuPy sees {count} CUDA device(s)")
    import array_api_compat.cupy as xp

    props = cupy.cuda.runtime.getDeviceProperties(index)
    gpu = props["name"].decode(errors="replace")
    memory = props["totalGlobalMem"] / 2**30
    name = f"cupy {cupy.__version__} on cuda:{index} ({gpu}, {memory:.0f} GiB)"
    return Backend(xp, cupy.cuda.Device(index), name=name)


def select_backend(spec: str = "auto") -> Backend:
    """Resolve a --device value: 'cpu', 'cuda', 'cuda:N' or 'auto' (CUDA when usable, else CPU)."""
    spec = spec.strip().lower()
    if spec == "cpu":
        return numpy_backend()
    if spec == "auto":
        try:
            backend = cuda_backend(0)
        except CupyMissing:
            return numpy_backend(note="auto chose the CPU: CuPy is not installed")
        except BackendError as exc:
            return numpy_backend(note=f"auto chose the CPU: {exc}")
        return Backend(backend.xp, backend.device, backend.name, note="auto chose CUDA")
    match = re.fullmatch(r"cuda(?::(\d+))?", spec)
    if match is None:
        raise UsageError(f"unknown device {spec!r}: use cpu, cuda, cuda:N or auto")
    return cuda_backend(int(match.group(1) or 0))
