"""The one table of array libraries: for each, the module it is, the devices it can compute on,
the extra that installs it, and how to get its Array API namespace. Everything that lists
libraries, pairs them with devices or dispatches on them reads this table; `pick_gpu` is the
one place a GPU is chosen by index, for every library that has GPUs.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any

import array_api_compat

from ..errors import BackendError, UsageError


@dataclass(frozen=True)
class Library:
    """An array library as --backend names it."""

    name: str  # --backend NAME, and backends/NAME.py
    title: str  # the library's own spelling, for messages
    module: str  # what must import for it to run
    devices: tuple[str, ...]  # the --device kinds it computes on: "cpu", "cuda"
    extra: str  # what `pip install` needs for it
    is_namespace: Callable[[Any], bool]  # array_api_compat's test for its namespace
    compat: str | None  # array_api_compat's wrapper of its namespace (None: used as it is)
    namespace: str  # the namespace a Backend of it computes with
    why_not: dict[str, str] = field(default_factory=dict)  # device kind -> why it cannot run


LIBRARIES: dict[str, Library] = {library.name: library for library in (
    Library("numpy", "NumPy", "numpy", ("cpu",), '"mnist-xp"',
            array_api_compat.is_numpy_namespace, "array_api_compat.numpy",
            "array_api_compat.numpy",
            {"cuda": "NumPy runs on the CPU only: for --device cuda use --backend cupy, torch "
                     "or jax"}),
    Library("cupy", "CuPy", "cupy", ("cuda",),
            '"mnist-xp[cuda12]" (or "mnist-xp[cuda13]" for CUDA 13)',
            array_api_compat.is_cupy_namespace, "array_api_compat.cupy",
            "array_api_compat.cupy",
            {"cpu": "CuPy runs on CUDA GPUs only: for --device cpu use --backend numpy, torch, "
                    "jax or dask"}),
    Library("torch", "torch", "torch", ("cpu", "cuda"), '"mnist-xp[torch]"',
            array_api_compat.is_torch_namespace, "array_api_compat.torch",
            "array_api_compat.torch"),
    Library("jax", "JAX", "jax", ("cpu", "cuda"), '"mnist-xp[jax]"',
            array_api_compat.is_jax_namespace, None, "jax.numpy"),
    Library("dask", "Dask", "dask", ("cpu",), '"mnist-xp[dask]"',
            array_api_compat.is_dask_namespace, "array_api_compat.dask.array",
            "array_api_compat.dask.array",
            {"cuda": "--backend dask computes NumPy chunks on the CPU; for --device cuda use "
                     "--backend cupy, torch or jax, or a GPU cluster (--workers N, dask-cuda)"}),
    # reachable as Backend(ndonnx) only: it has no --backend of its own
    Library("ndonnx", "ndonnx", "ndonnx", (), '"ndonnx"', array_api_compat.is_ndonnx_namespace,
            None, "ndonnx"),
)}
# What --backend takes: the libraries with devices, in the table's order.
CHOICES = tuple(name for name, library in LIBRARIES.items() if library.devices)


class LibraryMissing(BackendError):
    """The array library a backend needs is not installed."""


def library_of(xp: Any) -> Library | None:
    """The table's entry for namespace xp (a library's own or array_api_compat's), or None
    for a namespace the table does not list (array_api_strict, ...)."""
    return next((library for library in LIBRARIES.values() if library.is_namespace(xp)), None)


def compat_namespace(xp: Any) -> Any:
    """array_api_compat's wrapper of xp where the library needs one, else xp as given."""
    library = library_of(xp)
    return import_module(library.compat) if library and library.compat else xp


def adapter(library: str) -> Any:
    """backends/<library>.py, once the library itself imports; LibraryMissing names the extra
    when it does not."""
    entry = LIBRARIES[library]
    try:
        import_module(entry.module)
        return import_module(f".{library}", __package__)
    except ImportError as exc:
        if exc.name is not None and exc.name.split(".")[0] != entry.module:
            raise
        raise LibraryMissing(f"--backend {library} needs {library}: pip install "
                             f"{entry.extra}") from None
    except Exception as exc:  # a broken install raises more than ImportError
        raise BackendError(f"{library} is installed but failed to import: {exc}") from None


def parse_device(spec: str) -> tuple[str, int | None]:
    """'auto', 'cpu', 'cuda' or 'cuda:N' -> (kind, N or None)."""
    match = re.fullmatch(r"(auto|cpu|cuda)(?::(\d+))?", spec.strip().lower())
    if match is None or (match.group(2) is not None and match.group(1) != "cuda"):
        raise UsageError(f"unknown device {spec!r}: use cpu, cuda, cuda:N or auto")
    index = match.group(2)
    return match.group(1), None if index is None else int(index)


def runs_on(library: str, kind: str) -> bool:
    """Whether --backend library can compute on --device kind ('cpu', 'cuda'; 'auto' always)."""
    return kind == "auto" or kind in LIBRARIES[library].devices


def pick_gpu(library: str, kind: str, index: int | None, count: int, why_none: str
             ) -> int | None:
    """The GPU `library` computes on for --device kind[:index] when it sees `count` GPUs:
    their index, or None for the CPU when --device auto finds none (`why_none` says why).
    A GPU that is not there is one BackendError."""
    if count == 0:
        if kind == "auto" and "cpu" in LIBRARIES[library].devices:
            return None
        raise BackendError(f"--backend {library} --device cuda: {why_none}")
    index = index or 0
    if index >= count:
        raise BackendError(f"cuda:{index} does not exist: {LIBRARIES[library].title} sees "
                           f"{count} CUDA device(s)")
    return index
