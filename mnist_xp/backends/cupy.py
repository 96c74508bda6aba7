"""CuPy on a CUDA GPU: the device context, CUDA-event timing, the memory pool, TF32 and
out-of-memory errors. The fused element-wise kernels are in cupy_kernels.py."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import cupy
import numpy as np

from ..errors import BackendError
from .base import Backend
from .libraries import pick_gpu

INSTALL_HINT = ('pip install "mnist-xp[cuda12]" (or "mnist-xp[cuda13]") installs CuPy with '
                'the CUDA libraries, headers and NVRTC it compiles its kernels with')
# What a failed first kernel means, by a piece of CuPy's or CUDA's message, and what to do.
FAILURE_HINTS = (
    ("headers", INSTALL_HINT),
    ("nvrtc", INSTALL_HINT),
    ("DynamicLibNotFound", INSTALL_HINT),
    ("InsufficientDriver", "no NVIDIA driver, or one older than this CUDA needs: CUDA 12 needs "
                           "driver 525 or later, CUDA 13 driver 580 or later"),
    ("NoDevice", "no CUDA device is visible (check CUDA_VISIBLE_DEVICES)"),
)
# Out-of-memory as CuPy's pool, cuBLAS and the CUDA runtime each report it.
OUT_OF_MEMORY = ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "cudaErrorMemoryAllocation")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether exc means that the GPU ran out of memory: CuPy's OutOfMemoryError, or a cuBLAS
    or CUDA runtime allocation failure, which CuPy raises as their own error types."""
    return isinstance(exc, (cupy.cuda.memory.OutOfMemoryError, MemoryError)) or any(
        marker in str(exc) for marker in OUT_OF_MEMORY)


def failure_hint(message: str) -> str:
    """The advice for a CUDA failure's message, or ''."""
    return next((hint for marker, hint in FAILURE_HINTS if marker.lower() in message.lower()),
                "")


class CupyBackend(Backend):
    """CuPy on CUDA device `device` (a cupy.cuda.Device)."""

    def _prove(self) -> None:
        """A first kernel (NVRTC, the CUDA headers) and a cuBLAS product, copied back: any
        CUDA failure becomes one BackendError here, with what to do about it."""
        try:
            super()._prove()
        except BackendError as exc:
            hint = failure_hint(str(exc))
            raise BackendError(f"{exc}: {hint}" if hint else str(exc)) from None

    @property
    def supports_tf32(self) -> bool:
        """TF32 tensor cores: compute capability 8.0 (Ampere) or later."""
        return int(self.device.compute_capability) >= 80

    @property
    def device_name(self) -> str:
        return f"cuda:{self.device.id}"

    @property
    def on_gpu(self) -> bool:
        return True

    @property
    def hardware(self) -> str:
        props = cupy.cuda.runtime.getDeviceProperties(self.device.id)
        return props["name"].decode(errors="replace")

    @property
    def tail(self) -> Any:
        """CuPy's fused kernels, unless the environment sets MNIST_XP_FUSED=0."""
        if os.environ.get("MNIST_XP_FUSED", "1") != "0":
            from .cupy_kernels import cupy_tail

            return cupy_tail()
        return super().tail

    def activate(self) -> contextlib.AbstractContextManager:
        """CuPy's creation functions ignore `device=` and use the current device, so work on
        cuda:N runs inside `with backend.activate():`."""
        return self.device

    def host_view(self, array: Any) -> np.ndarray:
        return array.get()

    def synchronize(self) -> None:
        self.device.synchronize()

    def seconds(self, work: Any) -> float:
        """CUDA events around work(), never a bare host clock around asynchronous work."""
        with self.activate():
            start, end = cupy.cuda.Event(), cupy.cuda.Event()
            start.record()
            work()
            end.record()
            end.synchronize()
            return cupy.cuda.get_elapsed_time(start, end) / 1e3

    @contextlib.contextmanager
    def tf32(self, enabled: bool) -> Iterator[None]:
        """CuPy's float32 matmuls on TF32 tensor cores or in full FP32, for the block only."""
        try:  # CuPy's switch behind CUPY_TF32; private, so checked
            from cupy._core import _routines_linalg as linalg

            linalg.get_compute_type, linalg.set_compute_type, linalg.COMPUTE_TYPE_TF32  # noqa: B018
        except (ImportError, AttributeError):
            if enabled:
                raise BackendError("this CuPy has no TF32 switch (cupy._core._routines_linalg."
                                   "set_compute_type): run with --tf32 off") from None
            yield
            return
        before = linalg.get_compute_type(np.float32)
        linalg.set_compute_type(np.float32, linalg.COMPUTE_TYPE_TF32 if enabled
                                else linalg.COMPUTE_TYPE_DEFAULT)
        try:
            yield
        finally:
            linalg.set_compute_type(np.float32, before)

    @contextlib.contextmanager
    def peak_memory(self) -> Iterator[list[int | None]]:
        """The high-water mark of live bytes in CuPy's pool during the block, above what was
        live before it: the same measure as tracemalloc's on the CPU (the pool's size would
        count freed blocks it keeps for reuse). Allocations are counted by an allocator that
        wraps the pool's, on this device and thread, for the block only."""
        with self.activate():
            pool = cupy.get_default_memory_pool()
            pool.free_all_blocks()
            before = pool.used_bytes()
            highest = [before]

            def counting_malloc(size: int) -> Any:
                memory = pool.malloc(size)
                highest[0] = max(highest[0], pool.used_bytes())
                return memory

            peak: list[int | None] = [None]
            try:
                with cupy.cuda.using_allocator(counting_malloc):
                    yield peak
            finally:
                peak[0] = highest[0] - before

    def memory_available(self) -> int | None:
        """The GPU's free memory, with what CuPy's pool holds free for reuse."""
        with self.activate():
            free, _ = cupy.cuda.runtime.memGetInfo()
            pool = cupy.get_default_memory_pool()
            return int(free + pool.total_bytes() - pool.used_bytes())

    def is_out_of_memory(self, exc: BaseException) -> bool:
        return is_out_of_memory(exc)


def select(kind: str, index: int | None) -> Backend:
    """CuPy on cuda:index (kind 'cuda' or 'auto'); BackendError says why when impossible."""
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no driver, driver too old, no device node, ...
        hint = failure_hint(str(exc))
        raise BackendError(f"CuPy found no usable CUDA GPU: {exc}"
                           + (f": {hint}" if hint else "")) from None
    if count == 0 or not cupy.is_available():
        raise BackendError("CuPy found no usable CUDA GPU (0 devices visible)")
    index = pick_gpu("cupy", "cuda", index, count, "")
    import array_api_compat.cupy as xp

    props = cupy.cuda.runtime.getDeviceProperties(index)
    gpu = props["name"].decode(errors="replace")
    memory = props["totalGlobalMem"] / 2**30
    name = f"cupy {cupy.__version__} on cuda:{index} ({gpu}, {memory:.0f} GiB)"
    return CupyBackend(xp, cupy.cuda.Device(index), name=name)


BACKEND = CupyBackend
