"""Device selection and the Backend's host/device moves."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from mnist_xp import Backend, BackendError, UsageError, select_backend

from conftest import importorskip, jax_gpu_available, make_backend, torch_cuda_available


@pytest.fixture
def fresh_cupy_module():
    """Our CuPy module imported afresh in the test, against whatever `cupy` it then finds, and
    forgotten after it, so that no later test meets a module bound to a fake."""
    sys.modules.pop("mnist_xp.backends.cupy", None)
    yield
    sys.modules.pop("mnist_xp.backends.cupy", None)


@pytest.fixture
def fake_cupy(monkeypatch, fresh_cupy_module):
    """A CuPy that imports but finds no driver, as on a machine without a GPU."""
    module = types.ModuleType("cupy")

    def no_driver():
        raise RuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient")

    module.is_available = lambda: False
    module.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=no_driver))
    monkeypatch.setitem(sys.modules, "cupy", module)
    return module


@pytest.fixture
def no_cupy(monkeypatch, fresh_cupy_module):
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


@pytest.mark.parametrize("kind", ["numpy", "strict-CPU_DEVICE", "strict-device1", "torch-cpu",
                                  "jax-cpu", "dask-cpu"])
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


@pytest.mark.parametrize("backend,device,message", [
    ("numpy", "cuda", "NumPy runs on the CPU only"),
    ("numpy", "cuda:1", "NumPy runs on the CPU only"),
    ("cupy", "cpu", "CuPy runs on CUDA GPUs only"),
    ("dask", "cuda", "--backend dask computes NumPy chunks on the CPU"),
])
def test_impossible_pairs_say_why(backend, device, message):
    with pytest.raises(BackendError, match=message):
        select_backend(device, backend)


def test_unknown_backend():
    with pytest.raises(UsageError, match="unknown backend 'mxnet'"):
        select_backend("cpu", "mxnet")


@pytest.mark.parametrize("library,extra", [("torch", "torch"), ("jax", "jax"), ("dask", "dask")])
def test_a_missing_library_names_its_extra(monkeypatch, library, extra):
    monkeypatch.setitem(sys.modules, library, None)  # import library -> ImportError
    monkeypatch.delitem(sys.modules, f"mnist_xp.backends.{library}", raising=False)
    with pytest.raises(BackendError, match=rf'--backend {library} needs {library}: pip install '
                                           rf'"mnist-xp\[{extra}\]"'):
        select_backend("cpu", library)
    sys.modules.pop(f"mnist_xp.backends.{library}", None)


@pytest.mark.parametrize("kind,cls", [("torch-cpu", "TorchBackend"), ("jax-cpu", "JaxBackend"),
                                      ("dask-cpu", "DaskBackend")])
def test_each_library_gets_its_own_backend(kind, cls):
    backend = make_backend(kind)
    assert type(backend).__name__ == cls and backend.device_name == "cpu"
    assert backend.library == kind.split("-")[0] and not backend.on_gpu


def test_backend_of_a_bare_namespace_picks_the_library_module():
    """`Backend(xp, device)` from Python gets the same quirks as select_backend's choice."""
    jax = importorskip("jax")
    importorskip("dask")
    import array_api_compat.dask.array as dask_xp

    assert type(Backend(jax.numpy, jax.devices("cpu")[0])).__name__ == "JaxBackend"
    dask_backend = Backend(dask_xp)
    assert type(dask_backend).__name__ == "DaskBackend" and dask_backend.data_is_chunked


def test_jax_takes_no_device_or_a_device_name():
    """jax.numpy's default_device() is None and a string has no platform: both used to end in
    an AttributeError traceback."""
    jax = importorskip("jax")
    for device in (None, "cpu", "CPU"):
        backend = Backend(jax.numpy, device)
        assert backend.device == jax.devices()[0] if device is None else \
            backend.device == jax.devices("cpu")[0]
    for device in ("tpu", "cpu:0", "cuda:x"):
        with pytest.raises(BackendError, match=f"JAX has no device '{device}': use cpu"):
            Backend(jax.numpy, device)
    if not jax_gpu_available():
        with pytest.raises(BackendError, match="JAX has no device 'cuda:1': it sees 0 GPU"):
            Backend(jax.numpy, "cuda:1")


def test_torch_and_jax_without_a_gpu():
    """On this GPU-less CI: cuda is refused with the reason, auto falls back and says so."""
    for library in ("torch", "jax"):
        importorskip(library)
        if (library == "torch" and torch_cuda_available()) or (
                library == "jax" and jax_gpu_available()):
            continue
        with pytest.raises(BackendError, match="CPU-only build|sees no CUDA GPU|sees no GPU"):
            select_backend("cuda:0", library)
        backend = select_backend("auto", library)
        assert backend.device_name == "cpu" and backend.note.startswith("auto chose the CPU")


def test_a_namespace_missing_a_function_is_refused():
    import array_api_compat.numpy as compat

    sparse = types.ModuleType("sparselike")
    for name in dir(compat):
        if name not in ("arange", "take"):
            setattr(sparse, name, getattr(compat, name))
    with pytest.raises(BackendError, match="sparselike lacks arange, take, which the math needs"):
        Backend(sparse, "cpu")


def test_a_device_that_cannot_compute_is_refused_at_once():
    import array_api_strict as xs

    class Nowhere:
        def __repr__(self) -> str:
            return "nowhere"

    with pytest.raises(BackendError, match="array_api_strict cannot compute on nowhere"):
        Backend(xs, Nowhere())


def test_arrays_that_cannot_reach_numpy_are_refused():
    """A library whose arrays give neither DLPack nor numbers through __array__ (ndonnx's
    give 0-d object arrays) fails when the Backend is made, not at the first save."""
    import array_api_compat.numpy as compat

    class Opaque:
        def __init__(self, value):
            self.value = value

        def __array__(self, dtype=None, copy=None):
            return np.array(self.value, dtype=object)

    class OpaqueBackend(Backend):
        def asarray(self, host, dtype=None, *, copy=True, chunk_rows=None):
            return host

        def to_numpy(self, array):
            return super().to_numpy(Opaque(array))

    with pytest.raises(BackendError, match="cannot be copied to NumPy: neither DLPack nor"):
        OpaqueBackend(compat, "cpu")


@pytest.mark.parametrize("kind", ["numpy", "torch-cpu", "jax-cpu", "dask-cpu"])
def test_asarray_copies_so_the_caller_keeps_its_arrays(kind):
    backend = make_backend(kind)
    host = np.ones((4, 3), dtype=np.float32)
    device_array = backend.asarray(host)
    host[...] = 7.0
    np.testing.assert_array_equal(backend.to_numpy(device_array), np.ones((4, 3)))
    read_only = np.ones(3, dtype=np.float32)
    read_only.flags.writeable = False
    np.testing.assert_array_equal(backend.to_numpy(backend.asarray(read_only) + 1), [2, 2, 2])


@pytest.mark.parametrize("kind", ["numpy", "torch-cpu", "jax-cpu", "dask-cpu"])
def test_to_numpy_copies_so_the_device_array_keeps_its_values(kind):
    """NumPy's DLPack and torch's .numpy() share memory on a CPU: a model's host_params()
    once aliased its weights."""
    backend = make_backend(kind)
    device_array = backend.ready(backend.asarray(np.ones((4, 3), dtype=np.float32)))
    host = backend.to_numpy(device_array)
    host[...] = 7.0  # writeable, and its own
    np.testing.assert_array_equal(backend.to_numpy(device_array), np.ones((4, 3)))


def test_ndonnx_where_it_installs():
    ndonnx = importorskip("ndonnx")
    backend = Backend(ndonnx)
    assert type(backend).__name__ == "NdonnxBackend" and backend.device_name == "cpu"
    host = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(backend.to_numpy(backend.asarray(host)), host)


class DynamicLibNotFoundError(RuntimeError):
    """cuda.pathfinder's error when a CUDA library (libnvrtc) is nowhere to be found."""


class CUDARuntimeError(RuntimeError):
    pass


@pytest.fixture
def gpu_whose_first_kernel_fails(monkeypatch, fresh_cupy_module):
    """A CuPy that sees one GPU, whose first operation on it raises `failure[0]`: as on a
    machine with only the NVIDIA driver, or a driver too old, or a device gone."""
    import array_api_compat
    import array_api_compat.numpy as compat

    failure: list[BaseException] = []

    class Device:
        id, compute_capability = 0, "90"

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def synchronize(self):
            pass

    cupy = types.ModuleType("cupy")
    cupy.__version__ = "14.2.0"
    cupy.is_available = lambda: True
    cupy.cuda = types.SimpleNamespace(
        Device=lambda index=0: Device(), memory=types.SimpleNamespace(OutOfMemoryError=MemoryError),
        runtime=types.SimpleNamespace(
            getDeviceCount=lambda: 1,
            getDeviceProperties=lambda i: {"name": b"Fake H100", "totalGlobalMem": 80 * 2**30}))
    namespace = types.ModuleType("array_api_compat.cupy")
    for name in dir(compat):
        setattr(namespace, name, getattr(compat, name))

    def first_kernel(*args, **kwargs):
        raise failure[0]

    namespace.asarray = first_kernel
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setitem(sys.modules, "array_api_compat.cupy", namespace)
    monkeypatch.setattr(array_api_compat, "cupy", namespace, raising=False)
    return failure


@pytest.mark.parametrize("error,hint", [
    (RuntimeError("Failed to find CUDA headers (CUDA_PATH is not set)"),
     'pip install "mnist-xp[cuda12]"'),
    (DynamicLibNotFoundError('Failure finding "libnvrtc.so"'), 'pip install "mnist-xp[cuda12]"'),
    (CUDARuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient for "
                      "CUDA runtime version"), "CUDA 12 needs driver 525 or later"),
    (CUDARuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected"),
     "CUDA_VISIBLE_DEVICES"),
])
def test_a_gpu_whose_first_kernel_fails_is_refused_with_the_fix(gpu_whose_first_kernel_fails,
                                                                 error, hint):
    gpu_whose_first_kernel_fails.append(error)
    with pytest.raises(BackendError) as refused:
        select_backend("cuda", "cupy")
    message = str(refused.value)
    assert message.startswith(f"cupy cannot compute on cuda:0: {type(error).__name__}: ")
    assert hint in message and "\n" not in message
    fallback = select_backend("auto")  # --device auto: the CPU, saying why
    assert fallback.library == "numpy" and fallback.note.startswith("auto chose the CPU: cupy")
    assert hint in fallback.note


def test_gpu_out_of_memory_in_every_form():
    """CuPy's pool, cuBLAS's workspace and the CUDA runtime each report it their own way."""
    cupy_module = importorskip("cupy")
    from mnist_xp.backends.cupy import is_out_of_memory

    assert is_out_of_memory(cupy_module.cuda.memory.OutOfMemoryError(2**31, 2**30, 2**29))
    assert is_out_of_memory(RuntimeError("CUBLAS_STATUS_ALLOC_FAILED"))
    assert is_out_of_memory(RuntimeError("cudaErrorMemoryAllocation: out of memory"))
    assert not is_out_of_memory(RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED"))
