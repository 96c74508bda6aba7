"""CuPy's fused kernels compiled with NVRTC on the CPU: no GPU, no driver.

CuPy compiles an ElementwiseKernel at its first call, on a GPU, so an error in a kernel's C++
shows only there. This module builds the source CuPy would compile for each call the project
makes (KERNELS, in the kernels' module, describes them), with CuPy's own code generator, and
compiles it with NVRTC for each GPU architecture, float dtype and index width (CuPy compiles
32-bit indexing for arrays under 2 GiB and loops under 2**31 elements, 64-bit above). No array
is allocated: the calls are worked out from shapes alone, as CuPy 14's ElementwiseKernel
__call__ (cupy/_core/_kernel.pyx) does. On a GPU, one more test checks that worked-out source
against what a real call compiles.

It uses CuPy's private API (cupy._core._kernel, cupy._core.core, cupy.cuda.compiler), checked
against cupy-cuda12x 14.2.0: a CuPy that changes it fails here, saying what is missing.

Needs cupy-cuda12x with NVIDIA's NVRTC and CUDA runtime wheels (the runtime wheel holds the
CUDA headers), at the versions pinned for this test:

    pip install cupy-cuda12x==14.2.0 nvidia-cuda-nvrtc-cu12==12.9.86 \
        nvidia-cuda-runtime-cu12==12.9.79

Skipped, with the reason, only when CuPy or NVRTC is not installed (and never when
MNIST_XP_TEST_REQUIRE names cupy). Fails when the headers or NVRTC do not come from those
wheels: CuPy would otherwise take whatever CUDA the host has, and pass or fail by machine.
"""

from __future__ import annotations

import importlib
import math
import os
import re
import sys
from dataclasses import dataclass, replace

import numpy as np
import pytest

# The module whose KERNELS this tests: {name: (cupy.ElementwiseKernel, [call, ...])}, a call
# being {"args": (...), "size": dim} as that module's comment describes.
KERNELS_MODULE = os.environ.get("MNIST_XP_KERNELS_MODULE", "mnist_xp.backends.cupy_kernels")
ARCHS = ("sm_80", "sm_90")  # A100, H100
DTYPES = ("float32", "float64")
# Every dimension of every argument takes this size. CuPy picks the index width from sizes only
# (_index_32_bits: an array's bytes <= 2**31; the loop's CIndexer: elements <= 2**31), so each
# shows in the source as the last template argument of CArray<T, ndim, c_contiguous, 32-bit>
# and CIndexer<ndim, 32-bit>: 1 for int indices, 0 for ptrdiff_t ones.
INDEXING = {
    "int32": 64,  # everything 32-bit
    "int64-arrays": 2**15,  # 2-D arrays of 4 GiB and more: 64-bit; the loop, 2**30: 32-bit
    "int64": 2**31 + 8,  # everything 64-bit
}
REQUIRED = "cupy" in os.environ.get("MNIST_XP_TEST_REQUIRE", "").split(",")
PINS = ("cupy-cuda12x==14.2.0 nvidia-cuda-nvrtc-cu12==12.9.86 "
        "nvidia-cuda-runtime-cu12==12.9.79")


def _skip(reason: str) -> None:
    if REQUIRED:
        raise RuntimeError(f"{reason}, and MNIST_XP_TEST_REQUIRE names cupy")
    pytest.skip(reason, allow_module_level=True)


try:
    import cupy
except ModuleNotFoundError as exc:
    if exc.name != "cupy":
        raise
    _skip(f"CuPy is not installed, so its kernels are not compiled: pip install {PINS}")

if not cupy.__version__.startswith("14."):
    _skip(f"this test reads CuPy 14's private kernel code generator; CuPy {cupy.__version__} "
          f"is installed: pip install {PINS}")

try:
    from cupy.cuda import nvrtc

    NVRTC_VERSION = tuple(nvrtc.getVersion())
except Exception as exc:  # no libnvrtc: CuPy raises from its loader, whatever its kind
    _skip(f"CuPy {cupy.__version__} finds no NVRTC library ({type(exc).__name__}: {exc}): "
          f"pip install {PINS}")

try:  # CuPy's private API, as of 14.2.0
    from cupy._core import _carray, _kernel, _scalar, core
    from cupy.cuda import compiler

    _ArgInfo = _kernel._ArgInfo
    _elementwise_code = _kernel._get_elementwise_kernel_code
    _CScalar, _Indexer = _scalar.CScalar, _carray.Indexer
    _HEADER = "".join(f"#include <{name}>\n" for name in core._cupy_header_list)
    _assemble_options = core.assemble_cupy_compiler_options
    _NVRTCProgram, CompileException = compiler._NVRTCProgram, compiler.CompileException
except (ImportError, AttributeError) as exc:
    raise ImportError(f"CuPy {cupy.__version__} no longer has the private API this test builds "
                      f"kernel sources with (checked on 14.2.0): {exc}") from exc

# cupy/_core/_kernel.pxd: cdef enum _ArgKind (not visible from Python)
_NDARRAY, _INDEXER, _SCALAR = 1, 2, 3
_INT32_LIMIT = 1 << 31

KERNELS = importlib.import_module(KERNELS_MODULE).KERNELS


# --- A kernel call worked out from shapes, as ElementwiseKernel.__call__ does ---------------

@dataclass(frozen=True)
class _Array:
    """What a kernel call reads of an ndarray: its shape, strides and two flags."""
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    c_contiguous: bool
    index_32_bits: bool


def _new_array(shape: tuple[int, ...], itemsize: int) -> _Array:
    """A fresh C-contiguous array (ndarray._init_fast)."""
    strides, step = [], itemsize
    for extent in reversed(shape):
        strides.insert(0, step)
        step *= extent
    return _Array(shape, tuple(strides), True, math.prod(shape) * itemsize <= _INT32_LIMIT)


def _c_contiguity(shape, strides, itemsize) -> bool:
    """cupy/_core/internal.pyx get_c_contiguity, with ndarray._update_c_contiguity's size 0."""
    if math.prod(shape) == 0:
        return True
    if not strides or (len(strides) == 1 and strides[0] == itemsize):
        return True
    previous, index, stride = -1, 0, 0
    for axis, extent in enumerate(shape):
        if extent == 1:
            continue
        stride = strides[axis]
        if previous == -1 or strides[previous] != extent * stride:
            index += 1
        previous = axis
    return index == 0 or (index == 1 and stride == itemsize)


def _broadcast_to(a: _Array, shape: tuple[int, ...], itemsize: int) -> _Array:
    """internal._broadcast_core's view of `a` with `shape`."""
    if a.shape == shape:
        return a
    strides = [0] * len(shape)
    offset = len(shape) - len(a.shape)
    for axis, extent in enumerate(a.shape):
        if extent == shape[axis + offset]:
            strides[axis + offset] = a.strides[axis]
    too_big = math.prod(shape) * itemsize > _INT32_LIMIT
    return _Array(shape, tuple(strides), _c_contiguity(shape, strides, itemsize),
                  a.index_32_bits and not too_big)


def _reduce_dims(args: list, params: tuple, shape: tuple[int, ...], itemsize: int):
    """_kernel.pyx _reduce_dims / _reduced_view_core: merge the axes that all non-raw arrays
    let merge. Views keep their flags (they are made with update_c_contiguity=False)."""
    if len(shape) <= 1 or not args:
        return shape
    if len(args) == 1:
        raise NotImplementedError("one-argument kernels take CuPy's reduced_view() path")
    arrays = [i for i, a in enumerate(args) if isinstance(a, _Array) and not params[i].raw]
    strided = []
    for i in arrays:
        if not args[i].c_contiguous:
            if len(shape) == 2:
                return shape
            strided.append(i)
    if not arrays:
        return shape
    if not strided:
        total = math.prod(args[arrays[0]].shape)
        for i in arrays:
            args[i] = replace(args[i], shape=(total,), strides=(itemsize,))
        return (total,)
    extents, axes, last = list(shape), [], -1
    for axis in range(len(shape)):
        if extents[axis] == 1:
            continue
        if last < 0:
            last = axis
            continue
        if any(args[i].strides[axis] * extents[axis] != args[i].strides[last] for i in strided):
            axes.append(last)
        else:
            extents[axis] *= extents[last]
        last = axis
    if last >= 0:
        axes.append(last)
    if len(axes) == len(shape):
        return shape
    new_shape = tuple(extents[axis] for axis in axes)
    for i in arrays:
        args[i] = replace(args[i], shape=new_shape,
                          strides=tuple(args[i].strides[axis] for axis in axes))
    return new_shape


def kernel_call(kernel, call: dict, dtype: str, n: int):
    """(arginfos, type_map) that kernel(*args, size=...) builds for the call described, with
    every dimension n and T = dtype; None where CuPy would launch nothing (a size-0 loop)."""
    dtype = np.dtype(dtype)
    described, size = call["args"], call.get("size")
    assert len(described) == kernel.nargs, \
        f"{kernel.name}: {len(described)} arguments described, the kernel takes {kernel.nargs}"
    params = kernel.params  # inputs, outputs, then the CIndexer
    args = [_new_array((n,) * len(d), dtype.itemsize) if isinstance(d, tuple) else d
            for d in described]
    outputs = args[kernel.nin:]
    assert all(isinstance(a, _Array) for a in outputs), f"{kernel.name}: outputs are arrays"
    in_types, _, type_map = kernel._decide_params_type(
        tuple(dtype if isinstance(a, _Array) else None for a in args[:kernel.nin]),
        tuple(dtype for _ in outputs))
    for i, d in enumerate(described):
        if isinstance(d, str):
            want = dtype if d == "T" else np.dtype(d)
            assert np.dtype(in_types[i]) == want, \
                f"{kernel.name}: argument {i} is described as {d}, the kernel takes {in_types[i]}"

    non_raw = [i for i, a in enumerate(args) if isinstance(a, _Array) and not params[i].raw]
    if size is not None:
        assert not non_raw, f"{kernel.name}: size= goes with raw arrays only"
        shape = (n,)
    else:
        assert non_raw, f"{kernel.name}: without size=, some array must be non-raw"
        shape = tuple(np.broadcast_shapes(*(args[i].shape for i in non_raw)))
        for i in non_raw:
            if i < kernel.nin:
                args[i] = _broadcast_to(args[i], shape, dtype.itemsize)
            else:
                assert args[i].shape == shape, f"{kernel.name}: output {i} is not {shape}"
    if math.prod(shape) == 0:
        return None
    if kernel.reduce_dims:
        shape = _reduce_dims(args, params, shape, dtype.itemsize)

    infos = [_ArgInfo(_NDARRAY, cupy.ndarray, dtype, len(a.shape), a.c_contiguous,
                      a.index_32_bits) if isinstance(a, _Array)
             else _ArgInfo(_SCALAR, _CScalar, np.dtype(in_types[i]), 0, True, True)
             for i, a in enumerate(args)]
    infos.append(_ArgInfo(_INDEXER, _Indexer, None, len(shape), True,
                          math.prod(shape) <= _INT32_LIMIT))
    return tuple(infos), type_map


def kernel_code(kernel, arginfos, type_map) -> str:
    """The kernel's source as CuPy generates it (what kernel.cached_code shows after a call)."""
    return _elementwise_code(arginfos, type_map, kernel.params, kernel.operation, kernel.name,
                             kernel.preamble, **kernel.kwargs)


def compile_options(kernel, arch: str) -> tuple[str, ...]:
    """The options CuPy gives NVRTC for this kernel: core.compile_with_cache's, then
    _compile_with_cache_cuda's -ftz=true, then compile_using_nvrtc's (which asks the current
    device for -arch, so it cannot run here)."""
    return _assemble_options(tuple(kernel.kwargs.get("options", ()))) + (
        "-ftz=true", f"-arch={arch}", "--device-as-default-execution-space")


_compiled: dict = {}


def compile_cubin(code: str, options: tuple[str, ...]) -> bytes:
    """NVRTC's cubin for the code with CuPy's headers in front; CompileException, with NVRTC's
    log, when it does not compile. Each distinct source is compiled once a session."""
    key = (code, options)
    if key not in _compiled:
        program = _NVRTCProgram(_HEADER + code, "kernel.cu", method="cubin")
        _compiled[key] = program.compile(options)[0]
    return _compiled[key]


def _signature(code: str) -> str:
    return re.search(r"__global__ void \w+\((.*)\)", code).group(1)


# --- Tests -------------------------------------------------------------------------------------

CASES = [pytest.param(name, k, id=f"{name}-{k}" if len(calls) > 1 else name)
         for name, (_, calls) in KERNELS.items() for k in range(len(calls))]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("index", INDEXING)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("name", "variant"), CASES)
def test_kernel_compiles_with_nvrtc(name, variant, dtype, index, arch):
    kernel, calls = KERNELS[name]
    built = kernel_call(kernel, calls[variant], dtype, INDEXING[index])
    assert built is not None
    code = kernel_code(kernel, *built)
    flags = re.findall(r"(?:CArray<\w+, \d+, \d|CIndexer<\d+), (\d)>", _signature(code))
    assert flags[-1] == ("0" if index == "int64" else "1"), _signature(code)  # the CIndexer
    if index != "int64-arrays":
        assert set(flags) == {"0" if index == "int64" else "1"}, _signature(code)
    try:
        cubin, error = compile_cubin(code, compile_options(kernel, arch)), None
    except CompileException as exc:
        cubin, error = b"", str(exc)
    if error is not None:
        pytest.fail(f"NVRTC {NVRTC_VERSION} rejects {name} (T={dtype}, {index} indexing, {arch}):"
                    f"\n{error}\n--- source ---\n{code}", pytrace=False)
    assert cubin[:4] == b"\x7fELF"


BROKEN = {
    "syntax error": ("b = a +;", "expected an expression"),
    "undeclared variable": ("b = fmax(a, c)", 'identifier "c" is undefined'),
}


@pytest.mark.parametrize("operation", BROKEN)
def test_a_broken_kernel_fails_to_compile(operation):
    """The compile can fail: NVRTC's error comes back as CuPy's CompileException."""
    source, message = BROKEN[operation]
    kernel = cupy.ElementwiseKernel("T a", "T b", source, "mnist_xp_broken")
    code = kernel_code(kernel, *kernel_call(kernel, {"args": (("n",), ("n",))}, "float32", 64))
    with pytest.raises(CompileException, match=re.escape(message)):
        compile_cubin(code, compile_options(kernel, "sm_90"))


def _in_wheel(path: str, *layouts: str) -> bool:
    path = os.path.normpath(path)
    return any(path.endswith(os.path.normpath(layout)) for layout in layouts)


def _installed(distribution: str) -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return bool(version(distribution))
    except PackageNotFoundError:
        return False


@pytest.mark.skipif(not REQUIRED and not _installed("nvidia-cuda-runtime-cu12"),
                    reason="the pinned CUDA header wheels are not installed: the kernels were "
                           "compiled with this machine's own CUDA (as on a lent GPU machine)")
def test_headers_and_nvrtc_come_from_the_wheels():
    """CuPy takes CUDA's headers (cuda.pathfinder: pip wheels, then CUDA_PATH, then the host's
    CUDA) and NVRTC from wherever it finds them first: the test must compile with the pinned
    wheels', not the host's CUDA, or it passes or fails by machine."""
    package = os.path.dirname(cupy.__file__)
    includes = [o[2:] for o in compile_options(next(iter(KERNELS.values()))[0], "sm_90")
                if o.startswith("-I") and not os.path.abspath(o[2:]).startswith(package)]
    assert len(includes) == 1, includes
    (include,) = includes
    assert _in_wheel(include, "nvidia/cuda_runtime/include", "nvidia/cu13/include"), \
        f"CUDA headers from {include}, not from a wheel: pip install {PINS}"
    with open(os.path.join(include, "cuda_runtime_api.h")) as header:
        cudart = int(re.search(r"#define CUDART_VERSION\s+(\d+)", header.read()).group(1))
    headers = (cudart // 1000, cudart % 1000 // 10)
    assert headers[0] == NVRTC_VERSION[0] and headers <= NVRTC_VERSION, \
        f"CUDA {headers} headers with NVRTC {NVRTC_VERSION}: pin both wheels to one release"
    if sys.platform == "linux":
        with open("/proc/self/maps") as maps:
            loaded = {line.split()[-1] for line in maps if "libnvrtc.so" in line}
        assert loaded and all(_in_wheel(os.path.dirname(path), "nvidia/cuda_nvrtc/lib",
                                        "nvidia/cu13/lib") for path in loaded), \
            f"NVRTC loaded from {loaded}, not from a wheel: pip install {PINS}"


def _gpu() -> bool:
    try:
        return bool(cupy.is_available())
    except Exception:
        return False


@pytest.mark.gpu
@pytest.mark.skipif(not _gpu(), reason="no CUDA GPU for CuPy: a real call is compared on one")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("name", "variant"), CASES)
def test_the_worked_out_source_is_what_a_real_call_compiles(name, variant, dtype):
    """kernel_call's reading of CuPy, checked: the source a real call compiles (int32 sizes)."""
    kernel, calls = KERNELS[name]
    call, n = calls[variant], INDEXING["int32"]

    def real(d):  # arrays of ones, T scalars 0.5, integer scalars n (the softmax's classes)
        if isinstance(d, tuple):
            return cupy.ones((n,) * len(d), dtype)
        return np.dtype(dtype).type(0.5) if d == "T" else np.dtype(d).type(n)

    args = [real(d) for d in call["args"]]
    kernel._elementwise_kernel_memo.clear()  # so that this call records its source afresh
    kernel._cached_codes.clear()
    kernel(*args, **({"size": n} if "size" in call else {}))
    cupy.cuda.Device().synchronize()
    (compiled,) = kernel._cached_codes.values()
    assert kernel_code(kernel, *kernel_call(kernel, call, dtype, n)) == compiled
