"""Backends under test, parametrised over (namespace, device, dtype) as scikit-learn's array API
tests are: NumPy, array_api_strict on its CPU device (float64) and on Device("device1") (float32,
a stand-in GPU that refuses to mix devices), torch CPU when installed, CuPy on a real GPU."""

from __future__ import annotations

import os
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from mnist_xp.backend import Backend, numpy_backend

from helpers import synthetic_dataset, write_dataset


def cupy_available() -> bool:
    try:
        import cupy

        return bool(cupy.is_available())
    except Exception:
        return False


def make_backend(kind: str) -> Backend:
    if kind == "numpy":
        return numpy_backend()
    if kind == "strict-cpu":
        import array_api_strict as xp

        return Backend(xp, xp.Device("CPU_DEVICE"))
    if kind == "strict-device1":
        import array_api_strict as xp

        return Backend(xp, xp.Device("device1"))
    if kind == "torch-cpu":
        torch = pytest.importorskip("torch")
        return Backend(torch, torch.device("cpu"))
    if kind == "cupy":
        from mnist_xp.backend import cuda_backend

        return cuda_backend(0)
    raise ValueError(kind)


GPU = [pytest.mark.gpu, pytest.mark.skipif(not cupy_available(), reason="no CUDA GPU for CuPy")]
BACKENDS = [
    pytest.param(("numpy", "float32"), id="numpy-float32"),
    pytest.param(("numpy", "float64"), id="numpy-float64"),
    pytest.param(("strict-cpu", "float64"), id="strict-CPU_DEVICE-float64"),
    pytest.param(("strict-device1", "float32"), id="strict-device1-float32"),
    pytest.param(("torch-cpu", "float32"), id="torch-cpu-float32"),
    pytest.param(("cupy", "float32"), id="cupy-float32", marks=GPU),
]
FLOAT64_BACKENDS = [
    pytest.param(("numpy", "float64"), id="numpy-float64"),
    pytest.param(("strict-cpu", "float64"), id="strict-CPU_DEVICE-float64"),
    pytest.param(("cupy", "float64"), id="cupy-float64", marks=GPU),
]


@pytest.fixture(params=BACKENDS)
def backend_dtype(request) -> tuple[Backend, str]:
    kind, dtype = request.param
    return make_backend(kind), dtype


@pytest.fixture(params=FLOAT64_BACKENDS)
def backend64(request) -> Backend:
    return make_backend(request.param[0])


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
