"""The Backend: an Array API namespace, the device it computes on, and what the rest of the
package must know about its library. This base class serves any eager library that follows the
standard (NumPy, array_api_strict, ...); each library with quirks has a small module beside this
one (cupy, torch, jax, dask, ndonnx) whose subclass `Backend(xp, device)` picks by itself.

The math (nn.py, optim.py) never asks which library it runs on. A Backend knows only what an
array library needs: its namespace and device, moving arrays (`asarray` in, `to_numpy` out),
waiting for them (`ready`), building a function once (`compile`: jax.jit on JAX, persisted on
Dask, as it is elsewhere), the fused element-wise tail, and memory. How a step runs over the
data is an engine's business (step.py here, mnist_xp.cluster across machines).
"""

from __future__ import annotations

import contextlib
import time
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from ..errors import BackendError
from .libraries import adapter, compat_namespace, library_of

# Everything the math, the training loop and the model ask of a namespace.
NEEDED = ("asarray", "astype", "zeros", "zeros_like", "ones", "arange", "reshape", "expand_dims",
          "matrix_transpose", "matmul", "take", "exp", "log", "tanh", "sqrt", "max", "sum",
          "mean", "argmax", "float32", "int64", "__array_namespace_info__")


def library_name(xp: Any) -> str:
    """'numpy', 'cupy', 'torch', 'jax', 'dask', 'array_api_strict', ...: the library behind xp."""
    return xp.__name__.removeprefix("array_api_compat.").split(".")[0]


def library_version(library: str) -> str:
    return getattr(__import__(library), "__version__", "")


def _backend_class(xp: Any) -> type[Backend]:
    """The Backend subclass for xp's library (backends/<library>.py, imported when used)."""
    library = library_of(xp)
    if library is None:
        return Backend
    return adapter(library.name).BACKEND


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class Backend:
    """An Array API namespace and a device: `Backend(array_api_strict, Device("device1"))`.

    `Backend(xp, device)` returns the subclass for xp's library (JaxBackend for jax.numpy, ...)
    and checks, before anything else runs, that the namespace has what the math needs and that
    the device computes and copies back correctly. `note` says why select_backend chose it.
    """

    data_is_chunked = False  # True where the library splits arrays into row chunks itself

    def __new__(cls, xp: Any, device: Any = None, *args: Any, **kwargs: Any) -> Backend:
        if cls is Backend:
            cls = _backend_class(xp)
        return super().__new__(cls)

    def __init__(self, xp: Any, device: Any = None, name: str = "", note: str = "") -> None:
        self.xp = compat_namespace(xp)
        missing = [f for f in NEEDED if not hasattr(self.xp, f)]
        if missing:
            raise BackendError(f"{library_name(self.xp)} lacks {', '.join(missing)}, which the "
                               f"math needs: it is not a complete Array API namespace")
        self.device = self.resolve_device(device)
        self.note = note
        self.name = name or (f"{self.library} {library_version(self.library)} on "
                             f"{self.device_name}")
        self._prove()

    def resolve_device(self, device: Any) -> Any:
        """The library's device object for `device` (None: the namespace's default device)."""
        return self.xp.__array_namespace_info__().default_device() if device is None else device

    def _prove(self) -> None:
        """Compute [1, -2]·[1, -2]ᵀ + 1 = 6 on the device and bring it back: a namespace that
        cannot compute there, or whose arrays cannot reach NumPy, fails here in one line, not
        after the data has moved."""
        try:
            with self.activate():
                v = self.asarray(np.array([[1.0, -2.0]], dtype=np.float32))
                result = self.to_numpy(v @ self.xp.matrix_transpose(v) + 1.0)
        except BackendError:
            raise
        except Exception as exc:
            raise BackendError(f"{self.library} cannot compute on {self.device_name}: "
                               f"{type(exc).__name__}: {first_line(exc)}") from None
        if result.shape != (1, 1) or result[0, 0] != 6.0:
            raise BackendError(f"{self.library} on {self.device} computed {result!r} for "
                               f"[1, -2]·[1, -2]ᵀ + 1, not [[6.0]]")

    @property
    def library(self) -> str:
        return library_name(self.xp)

    @property
    def device_name(self) -> str:
        """'cpu', 'cuda:0', ...: the device as --device spells it where it can."""
        return str(self.device)

    @property
    def on_gpu(self) -> bool:
        return False

    @property
    def supports_tf32(self) -> bool:
        """Whether float32 products can run on TF32 tensor cores here."""
        return False

    @property
    def hardware(self) -> str:
        """The device's model name where the library knows it (GPU names for their peaks)."""
        return ""

    @property
    def default_chunk_rows(self) -> int | None:
        """Rows per chunk of a full-batch step: 2048 on a CPU, where chunk-sized temporaries
        stay in cache (measured: ~10% faster per step than one pass), None (one pass) on a GPU,
        where each extra chunk costs kernel launches."""
        return None if self.on_gpu else 2048

    @property
    def tail(self) -> Any:
        """The element-wise kernels of a step (nn.Tail): the Array API reference here."""
        from ..nn import ARRAY_API_TAIL

        return ARRAY_API_TAIL

    def activate(self) -> contextlib.AbstractContextManager:
        """Make this device (and its numeric settings) current for the block."""
        return contextlib.nullcontext()

    def check_dtype(self, dtype: str) -> None:
        """Raise BackendError when this backend cannot compute in dtype."""
        if not hasattr(self.xp, dtype):
            raise BackendError(f"{self.library} has no {dtype}")

    def asarray(self, host: Any, dtype: Any = None, *, copy: bool | None = True,
                chunk_rows: int | None = None) -> Any:
        """Copy a host array (or nested sequence) to this device. It is a copy by default, so
        nothing done on the device can change the caller's array, even where the library could
        share its memory; copy=None shares where it can (for data that is only read).
        `chunk_rows` is for libraries that split arrays into row chunks (Dask)."""
        with self.activate():
            return self.xp.asarray(host, dtype=dtype, device=self.device, copy=copy)

    def to_numpy(self, array: Any) -> np.ndarray:
        """A device array as a NumPy array of its own: never a view of the device array's memory
        (a CPU library may share it), so that changing one never changes the other."""
        host = self.host_view(array)
        if host.dtype == object:
            raise BackendError(f"arrays of {self.library} cannot be copied to NumPy: neither "
                               f"DLPack nor __array__ gives numbers")
        return host if host.flags.owndata and host.flags.writeable else host.copy()

    def host_view(self, array: Any) -> np.ndarray:
        """The array on the host, through DLPack where the library exports it, else through
        __array__: possibly a view of its memory (to_numpy copies where it is)."""
        try:
            return np.from_dlpack(array)
        except (AttributeError, BufferError, TypeError, RuntimeError):
            return np.asarray(array)

    def synchronize(self) -> None:
        """Wait until all queued work on the device has finished (a no-op where work runs at
        once)."""

    def ready(self, tree: Any) -> Any:
        """The arrays in tree (nested lists and tuples), computed: waited for on asynchronous
        devices, persisted on Dask. Returns the tree to use from now on."""
        self.synchronize()
        return tree

    def compile(self, function: Callable[..., Any], static_argnames: Sequence[str] = ()
                ) -> Callable[..., Any]:
        """`function` built for this backend: jitted on JAX (recompiled only when a static
        argument or a shape changes), its results persisted on Dask, as it is elsewhere."""
        return function

    def seconds(self, work: Callable[[], Any]) -> float:
        """How long work() takes on the device, its results computed."""
        self.synchronize()
        begin = time.perf_counter()
        self.ready(work())
        return time.perf_counter() - begin

    @contextlib.contextmanager
    def tf32(self, enabled: bool) -> Iterator[None]:
        """float32 matrix products on TF32 tensor cores (GPUs that have them) for the block."""
        if enabled:
            raise BackendError(f"TF32 is a GPU mode: {self.name} has none")
        yield

    @contextlib.contextmanager
    def peak_memory(self) -> Iterator[list[int | None]]:
        """The high-water mark of bytes allocated in the block and alive at once, in the list
        this yields once the block ends. Here: host memory as tracemalloc sees it, which holds
        for NumPy-based libraries; None where the library allocates out of its sight."""
        peak: list[int | None] = [None]
        tracemalloc.start()
        try:
            yield peak
        finally:
            peak[0] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()

    def memory_available(self) -> int | None:
        """Bytes the device can still give, where known: here, the host's available memory
        (Linux's MemAvailable), which is where a CPU library's arrays live."""
        if self.on_gpu:
            return None
        try:
            with open("/proc/meminfo") as lines:
                for line in lines:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            pass
        return None

    def is_out_of_memory(self, exc: BaseException) -> bool:
        """Whether exc means that the device ran out of memory."""
        return isinstance(exc, MemoryError)

    def close(self) -> None:
        """Let go of what the backend holds beyond arrays (a cluster); nothing here."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


BACKEND = Backend
