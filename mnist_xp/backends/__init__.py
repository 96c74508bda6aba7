"""Choosing an array library and a device: `--backend auto|numpy|cupy|torch|jax|dask` and
`--device auto|cpu|cuda|cuda:N`, or any `Backend(xp, device)` from Python.

`auto` keeps NumPy on the CPU and CuPy on CUDA; a library that is not installed is named with
the extra that installs it, and a combination that cannot work says why (libraries.py holds
what each library can do).
"""

from __future__ import annotations

import numpy as np

from ..errors import BackendError, UsageError
from .base import Backend
from .libraries import CHOICES, LIBRARIES, LibraryMissing, adapter, parse_device, runs_on

__all__ = ["CHOICES", "LIBRARIES", "Backend", "LibraryMissing", "check_pair", "numpy_backend",
           "parse_device", "select_backend"]


def numpy_backend(note: str = "", reference: bool = False) -> Backend:
    """NumPy on the host CPU (with `reference`, the Array API tail only: see backends.numpy)."""
    return Backend(np, "cpu", name=f"numpy {np.__version__} on cpu", note=note,
                   reference=reference)


def check_pair(device: str, backend: str) -> tuple[str, int | None, str]:
    """(device kind, GPU index, library) for a --device and --backend pair, refused before any
    import where the name is unknown or the library cannot compute on that device."""
    kind, index = parse_device(device)
    library = backend.strip().lower()
    if library not in ("auto", *CHOICES):
        raise UsageError(f"unknown backend {backend!r}: use auto, {', '.join(CHOICES)}")
    if library != "auto" and not runs_on(library, kind):
        raise BackendError(LIBRARIES[library].why_not[kind])
    return kind, index, library


def select_backend(device: str = "auto", backend: str = "auto") -> Backend:
    """The Backend for a --device and --backend pair.

    backend 'auto': NumPy for --device cpu, CuPy for cuda[:N], and for --device auto CuPy when
    it imports and sees a GPU, else NumPy (its `note` says why). A cluster is an engine, not a
    backend: mnist_xp.engines.select_engine starts or joins one.
    """
    kind, index, library = check_pair(device, backend)
    if library == "auto":
        if kind == "cpu":
            return numpy_backend()
        try:
            chosen = adapter("cupy").select(kind, index)
        except BackendError as exc:
            if kind == "cuda":
                if isinstance(exc, LibraryMissing):
                    raise LibraryMissing(f"--device cuda needs CuPy: pip install "
                                         f"{LIBRARIES['cupy'].extra}") from None
                raise
            reason = "CuPy is not installed" if isinstance(exc, LibraryMissing) else str(exc)
            return numpy_backend(note=f"auto chose the CPU: {reason}")
        chosen.note = "auto chose CUDA" if kind == "auto" else ""
        return chosen
    if library == "numpy":
        return numpy_backend()
    return adapter(library).select(kind, index)
