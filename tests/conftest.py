"""Backends under test, parametrised over (namespace, device, dtype) as scikit-learn's array API
tests are: NumPy, array_api_strict on its CPU device (float64) and on Device("device1") (float32,
a stand-in GPU that refuses to mix devices), torch, JAX (jitted; float64 in its x64 mode) and
Dask on the CPU when installed, and CuPy, torch and JAX on a real GPU (marked `gpu`)."""

from __future__ import annotations

import functools
import os
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from mnist_xp.backends import Backend, numpy_backend

from helpers import synthetic_dataset, write_dataset


def cupy_available() -> bool:
    try:
        import cupy

        return bool(cupy.is_available())
    except Exception:
        return False


def torch_cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def jax_gpu_available() -> bool:
    try:
        import jax

        return bool(jax.devices("gpu"))
    except (ImportError, RuntimeError):
        return False


# Libraries that must be installed: their tests fail instead of skipping (CI sets this, so that
# a broken install cannot skip its way to green).
REQUIRED = set(filter(None, os.environ.get("MNIST_XP_TEST_REQUIRE", "").split(",")))


def importorskip(library: str):
    if library in REQUIRED:
        return __import__(library)
    return pytest.importorskip(library)


def make_backend(kind: str) -> Backend:
    from mnist_xp.backends import select_backend

    if kind == "numpy":
        return numpy_backend()
    if kind.startswith("strict-"):
        import array_api_strict as xp

        return Backend(xp, xp.Device(kind.removeprefix("strict-")))
    library, device = kind.split("-")
    importorskip(library)
    return select_backend(device, library)


def _gpu(reason: str, available: bool) -> list:
    return [pytest.mark.gpu, pytest.mark.skipif(not available, reason=reason)]


GPU = _gpu("no CUDA GPU for CuPy", cupy_available())
TORCH_GPU = _gpu("no CUDA GPU for torch", torch_cuda_available())
JAX_GPU = _gpu("no GPU for JAX", jax_gpu_available())
BACKENDS = [
    pytest.param(("numpy", "float32"), id="numpy-float32"),
    pytest.param(("numpy", "float64"), id="numpy-float64"),
    pytest.param(("strict-CPU_DEVICE", "float64"), id="strict-CPU_DEVICE-float64"),
    pytest.param(("strict-device1", "float32"), id="strict-device1-float32"),
    pytest.param(("torch-cpu", "float32"), id="torch-cpu-float32"),
    pytest.param(("jax-cpu", "float32"), id="jax-cpu-float32"),
    pytest.param(("jax-cpu", "float64"), id="jax-cpu-float64"),
    pytest.param(("dask-cpu", "float32"), id="dask-cpu-float32"),
    pytest.param(("dask-cpu", "float64"), id="dask-cpu-float64"),
    pytest.param(("cupy-cuda", "float32"), id="cupy-float32", marks=GPU),
    pytest.param(("torch-cuda", "float32"), id="torch-cuda-float32", marks=TORCH_GPU),
    pytest.param(("jax-cuda", "float32"), id="jax-cuda-float32", marks=JAX_GPU),
]
FLOAT64_BACKENDS = [
    pytest.param(("numpy", "float64"), id="numpy-float64"),
    pytest.param(("strict-CPU_DEVICE", "float64"), id="strict-CPU_DEVICE-float64"),
    pytest.param(("torch-cpu", "float64"), id="torch-cpu-float64"),
    pytest.param(("jax-cpu", "float64"), id="jax-cpu-float64"),
    pytest.param(("dask-cpu", "float64"), id="dask-cpu-float64"),
    pytest.param(("cupy-cuda", "float64"), id="cupy-float64", marks=GPU),
]


@contextmanager
def float64_mode(kind: str, dtype: str) -> Iterator[None]:
    """JAX computes float64 only in its x64 mode: on for the test, where the test needs it."""
    if kind.startswith("jax") and dtype == "float64":
        import jax

        with jax.enable_x64(True):
            yield
    else:
        yield


@pytest.fixture(params=BACKENDS)
def backend_dtype(request) -> Iterator[tuple[Backend, str]]:
    kind, dtype = request.param
    with float64_mode(kind, dtype):
        yield make_backend(kind), dtype


@pytest.fixture(params=FLOAT64_BACKENDS)
def backend64(request) -> Iterator[Backend]:
    kind, dtype = request.param
    with float64_mode(kind, dtype):
        yield make_backend(kind)


@pytest.fixture(scope="session")
def tiny_data():
    return synthetic_dataset()


@pytest.fixture
def tiny_dir(tmp_path: Path, tiny_data) -> Path:
    folder = tmp_path / "tiny"
    write_dataset(folder, tiny_data)
    return folder


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    folder = os.environ.get("MNIST_XP_DATA_DIR")
    if not folder:
        pytest.skip("MNIST_XP_DATA_DIR is not set: the real-MNIST tests need it")
    return Path(folder)


@pytest.fixture(autouse=True)
def _no_user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request) -> None:
    """Keep tests out of ~/.cache: the cache falls back to a temporary folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    if "real_data_dir" not in request.fixturenames:
        monkeypatch.delenv("MNIST_XP_DATA_DIR", raising=False)


def compiled(backend: Backend, function, **fixed):
    """function with the `fixed` keyword arguments bound, built by the backend as training
    builds its step: jitted on JAX (so the math is also checked under tracing), its results
    persisted on Dask, as it is elsewhere."""
    return backend.compile(functools.partial(function, **fixed))


def assert_close(actual, expected, dtype: str, scale: float = 1.0) -> None:
    """Dtype-aware tolerance, as scikit-learn's array API tests use."""
    rtol, atol = (1e-4, 1e-5 * scale) if dtype == "float32" else (1e-10, 1e-12 * scale)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


@contextmanager
def traced_peak() -> Iterator[list[int]]:
    """Trace host allocations in the block; the list it yields then holds the peak in bytes."""
    peak: list[int] = []
    tracemalloc.start()
    try:
        yield peak
    finally:
        peak.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
