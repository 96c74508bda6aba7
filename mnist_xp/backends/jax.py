"""JAX: a compiled step. `compile` wraps the training step and the evaluation in jax.jit, so
the very nn/optim functions are traced once per configuration (and batch shape) and run as one
XLA program per step. Arrays are immutable, so the math's in-place operators quietly make new
arrays here, which is correct because every function returns what it computes.

float32 matrix products run at full precision ("highest") unless TF32 is asked for: JAX's
default on NVIDIA GPUs would be TF32, which would not give NumPy's numbers. float64 needs JAX's
x64 mode, switched on before JAX starts (JAX_ENABLE_X64=1).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import BackendError, UsageError
from .base import Backend
from .libraries import LIBRARIES, parse_device, pick_gpu

JAX_HINT = f'pip install {LIBRARIES["jax"].extra} (CPU), or "jax[cuda12]" for NVIDIA GPUs'


class JaxBackend(Backend):
    """jax.numpy on a jax Device (jax.devices("cpu")[0], jax.devices("gpu")[N])."""

    def resolve_device(self, device: Any) -> Any:
        """A jax Device as given; None: JAX's default device; 'cpu', 'cuda', 'cuda:N' or 'auto'
        as --device spells them (jax.numpy's default_device() is None, and strings have no
        platform)."""
        if device is None:
            return jax.devices()[0]
        if not isinstance(device, str):
            return device
        try:
            kind, index = parse_device(device)
        except UsageError:
            raise BackendError(f"JAX has no device {device!r}: use cpu, cuda, cuda:N or a "
                               f"jax.Device") from None
        if kind == "auto":
            return jax.devices()[0]
        platform = "cpu" if kind == "cpu" else "gpu"
        devices = jax.devices("cpu") if kind == "cpu" else _gpus()
        if (index or 0) >= len(devices):
            raise BackendError(f"JAX has no device {device!r}: it sees {len(devices)} "
                               f"{platform.upper()} device(s)")
        return devices[index or 0]

    @property
    def device_name(self) -> str:
        return "cpu" if self.device.platform == "cpu" else f"cuda:{self.device.id}"

    @property
    def on_gpu(self) -> bool:
        return self.device.platform == "gpu"

    @property
    def supports_tf32(self) -> bool:
        capability = getattr(self.device, "compute_capability", "0")
        return self.on_gpu and float(capability) >= 8.0

    @property
    def hardware(self) -> str:
        return self.device.device_kind if self.on_gpu else ""

    @property
    def default_chunk_rows(self) -> int | None:
        """One pass: XLA fuses the element-wise work, and a chunk loop would be unrolled into
        the compiled step once per chunk."""
        return None

    def activate(self) -> contextlib.AbstractContextManager:
        stack = contextlib.ExitStack()
        stack.enter_context(jax.default_device(self.device))
        stack.enter_context(jax.default_matmul_precision("highest"))
        return stack

    def check_dtype(self, dtype: str) -> None:
        if dtype == "float64" and not jax.config.jax_enable_x64:
            raise BackendError("JAX computes in float64 only in its x64 mode: set "
                               "JAX_ENABLE_X64=1 before starting, or use --dtype float32")

    def host_view(self, array: Any) -> np.ndarray:
        return np.asarray(jax.device_get(array))

    def ready(self, tree: Any) -> Any:
        return jax.block_until_ready(tree)

    def compile(self, function: Callable[..., Any], static_argnames: Sequence[str] = ()
                ) -> Callable[..., Any]:
        return jax.jit(function, static_argnames=tuple(static_argnames))

    @contextlib.contextmanager
    def tf32(self, enabled: bool) -> Iterator[None]:
        if enabled and not self.on_gpu:
            raise BackendError(f"TF32 is a GPU mode: {self.name} has none")
        with jax.default_matmul_precision("tensorfloat32" if enabled else "highest"):
            yield

    @contextlib.contextmanager
    def peak_memory(self) -> Iterator[list[int | None]]:
        """None: XLA's buffers are out of tracemalloc's sight, and its GPU peak counts since
        the process started, with no reset."""
        yield [None]

    def is_out_of_memory(self, exc: BaseException) -> bool:
        return isinstance(exc, MemoryError) or "RESOURCE_EXHAUSTED" in str(exc)


def select(kind: str, index: int | None) -> Backend:
    """JAX on its CPU, on GPU number index, or ('auto') on its first GPU when it has one."""
    version = jax.__version__
    gpus = [] if kind == "cpu" else _gpus()
    index = None if kind == "cpu" else pick_gpu("jax", kind, index, len(gpus),
                                                f"JAX sees no GPU ({JAX_HINT})")
    if index is None:
        note = "auto chose the CPU: JAX sees no GPU" if kind == "auto" else ""
        return JaxBackend(jnp, jax.devices("cpu")[0], name=f"jax {version} on cpu", note=note)
    device = gpus[index]
    return JaxBackend(jnp, device, name=f"jax {version} on cuda:{index} ({device.device_kind})",
                      note="auto chose CUDA" if kind == "auto" else "")


def _gpus() -> list[Any]:
    """JAX's GPUs; none from a CPU-only jaxlib ("Unknown backend: 'gpu' requested")."""
    try:
        return jax.devices("gpu")
    except RuntimeError:
        return []


BACKEND = JaxBackend
