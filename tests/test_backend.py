"""Device selection and the Backend's host/device moves."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from mnist_xp import Backend, BackendError, UsageError, select_backend

from conftest import make_backend


@pytest.fixture
def fake_cupy(monkeypatch):
    """A CuPy that imports but finds no driver, as on a machine without a GPU."""
    module = types.ModuleType("cupy")

    def no_driver():
        raise RuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient")

    module.is_available = lambda: False
    module.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=no_driver))
    monkeypatch.setitem(sys.modules, "cupy", module)
    return module


@pytest.fixture
def no_cupy(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy -> ImportError


def test_cpu():
    backend = select_backend("cpu")
    assert backend.library == "numpy" and backend.device_name == "cpu"
    assert backend.default_chunk_rows == 2048


def test_cuda_without_cupy(no_cupy):
    hint = r'--device cuda needs CuPy: pip install "mnist-xp\[cuda12\]"'
    with pytest.raises(BackendError, match=hint):
        select_backend("cuda")


def test_cuda_with_cupy_but_no_driver(fake_cupy):
    with pytest.raises(BackendError, match="no usable CUDA GPU: cudaErrorInsufficientDriver"):
        select_backend("cuda:1")


def test_auto_falls_back_to_cpu_and_says_why(no_cupy, fake_cupy):
    backend = select_backend("auto")
    assert backend.library == "numpy"
    assert "auto chose the CPU" in backend.note and "insufficient" in backend.note


def test_auto_without_cupy(no_cupy):
    assert select_backend(" AUTO ").note == "auto chose the CPU: CuPy is not installed"


@pytest.mark.parametrize("spec", ["gpu", "cuda:", "cuda:x", "tpu:0", ""])
def test_unknown_device(spec):
    with pytest.raises(UsageError, match="unknown device"):
        select_backend(spec)


def test_raw_numpy_is_wrapped():
    import array_api_compat

    backend = Backend(np, "cpu")
    assert array_api_compat.is_numpy_namespace(backend.xp)
    assert backend.xp is not np and "numpy" in backend.name


@pytest.mark.parametrize("kind", ["numpy", "strict-cpu", "strict-device1", "torch-cpu"])
def test_round_trip(kind):
    backend = make_backend(kind)
    host = np.arange(12, dtype=np.float32).reshape(3, 4)
    array = backend.asarray(host)
    backend.synchronize()
    np.testing.assert_array_equal(backend.to_numpy(array), host)
    assert backend.to_numpy(array).dtype == np.float32


def test_stand_in_gpu_refuses_mixed_devices():
    """What makes device1 a useful stand-in: a forgotten device= fails loudly."""
    import array_api_strict as xs

    backend = make_backend("strict-device1")
    on_device = backend.asarray(np.ones(3, dtype=np.float32))
    with pytest.raises(ValueError, match="different devices"):
        on_device + xs.ones(3, dtype=xs.float32)
