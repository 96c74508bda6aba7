"""Choosing a backend: `--backend auto|numpy|cupy|torch|jax|dask` and
`--device auto|cpu|cuda|cuda:N`, or any `Backend(xp, device)` from Python.

`auto` keeps NumPy on the CPU and CuPy on CUDA; a library that is not installed is named with
the extra that installs it, and a combination that cannot work says why.
"""

from __future__ import annotations

import re
from importlib import import_module

import numpy as np

from ..errors import BackendError, UsageError
from .base import Backend

LIBRARIES = ("numpy", "cupy", "torch", "jax", "dask")
EXTRAS = {"cupy": '"mnist-xp[cuda12]" (or "mnist-xp[cuda13]" for CUDA 13)',
          "torch": '"mnist-xp[torch]"', "jax": '"mnist-xp[jax]"', "dask": '"mnist-xp[dask]"'}


# Pairs of --backend and --device that cannot work, and why: refused before any import.
IMPOSSIBLE = {
    ("numpy", "cuda"): "NumPy runs on the CPU only: for --device cuda use --backend cupy, "
                       "torch or jax",
    ("cupy", "cpu"): "CuPy runs on CUDA GPUs only: for --device cpu use --backend numpy, "
                     "torch, jax or dask",
    ("dask", "cuda"): "--backend dask computes NumPy chunks on the CPU; for --device cuda use "
                      "--backend cupy, torch or jax, or a GPU cluster (--workers N, dask-cuda)",
}


class LibraryMissing(BackendError):
    """The array library a backend needs is not installed."""


def numpy_backend(note: str = "") -> Backend:
    """NumPy on the host CPU."""
    return Backend(np, "cpu", name=f"numpy {np.__version__} on cpu", note=note)


def parse_device(spec: str) -> tuple[str, int | None]:
    """'auto', 'cpu', 'cuda' or 'cuda:N' -> (kind, N or None)."""
    match = re.fullmatch(r"(auto|cpu|cuda)(?::(\d+))?", spec.strip().lower())
    if match is None or (match.group(2) is not None and match.group(1) != "cuda"):
        raise UsageError(f"unknown device {spec!r}: use cpu, cuda, cuda:N or auto")
    index = match.group(2)
    return match.group(1), None if index is None else int(index)


def _library_module(library: str):
    """backends/<library>.py, once the library itself imports."""
    try:
        import_module(library)
        return import_module(f".{library}", __name__)
    except ImportError as exc:
        if exc.name is not None and exc.name.split(".")[0] != library:
            raise
        raise LibraryMissing(f"--backend {library} needs {library}: pip install "
                             f"{EXTRAS[library]}") from None
    except Exception as exc:  # a broken install raises more than ImportError
        raise BackendError(f"{library} is installed but failed to import: {exc}") from None


def select_backend(device: str = "auto", backend: str = "auto", *, workers: int | None = None,
                   scheduler: str | None = None) -> Backend:
    """The Backend for a --device and --backend pair.

    backend 'auto': NumPy for --device cpu, CuPy for cuda[:N], and for --device auto CuPy when
    it imports and sees a GPU, else NumPy (its `note` says why). With `workers` (a LocalCluster
    of that many workers started here) or `scheduler` (the address of a running Dask
    scheduler), --backend dask trains on a cluster (backends/cluster.py); close() it after.
    """
    kind, index = parse_device(device)
    library = backend.strip().lower()
    if library not in ("auto", *LIBRARIES):
        raise UsageError(f"unknown backend {backend!r}: use auto, {', '.join(LIBRARIES)}")
    if workers is not None or scheduler is not None:
        if library != "dask":
            raise UsageError("--workers and --scheduler are for --backend dask")
        if workers is not None and scheduler is not None:
            raise UsageError("--workers starts a cluster here, --scheduler joins one: give one")
        if workers is not None and workers < 1:
            raise UsageError(f"--workers {workers}: must be at least 1")
        if index is not None:
            raise UsageError(f"--device {device} with a cluster: its workers choose their "
                             f"GPUs (dask-cuda, one worker per GPU it sees); use --device cuda, "
                             f"and CUDA_VISIBLE_DEVICES={index} to give it only that one")
        _library_module("dask")
        try:
            from . import cluster
        except ImportError as exc:
            raise LibraryMissing(f"--backend dask on a cluster needs dask.distributed "
                                 f"({exc.name}): pip install {EXTRAS['dask']}") from None
        return cluster.start(workers, scheduler, gpu=kind == "cuda")
    if library == "auto":
        if kind == "cpu":
            return numpy_backend()
        try:
            chosen = _library_module("cupy").select(kind, index)
        except BackendError as exc:
            if kind == "cuda":
                if isinstance(exc, LibraryMissing):
                    raise LibraryMissing(f"--device cuda needs CuPy: pip install "
                                         f"{EXTRAS['cupy']}") from None
                raise
            reason = "CuPy is not installed" if isinstance(exc, LibraryMissing) else str(exc)
            return numpy_backend(note=f"auto chose the CPU: {reason}")
        chosen.note = "auto chose CUDA" if kind == "auto" else ""
        return chosen
    if (library, kind) in IMPOSSIBLE:
        raise BackendError(IMPOSSIBLE[library, kind])
    if library == "numpy":
        return numpy_backend()
    return _library_module(library).select(kind, index)
