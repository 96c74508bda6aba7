"""Tails: the element-wise work of a step behind nn.Tail. The Array API tail is the reference;
CuPy's fused kernels (gpu), NumPy's Adam and a tail built the fused way from xp calls must
match it."""

from __future__ import annotations

import numpy as np
import pytest
from array_api_compat import array_namespace

from mnist_xp import nn
from mnist_xp.optim import Adam

from conftest import GPU, assert_close, compiled, cupy_available, make_backend
from test_nn import small_problem


def _relu_keeping_activation(Z, b):
    """As the fused kernel does: A = relu(Z + b), and A itself kept as the slope."""
    xp = array_namespace(Z)
    Z += b
    Z *= xp.astype(Z > 0, Z.dtype)
    return Z, Z


def _relu_backward_from_activation(dA, A):
    dA *= array_namespace(dA).astype(A > 0, dA.dtype)
    return dA


def _adam_update(p, g, m, v, step_size, beta1, beta2, eps_hat, decay):
    """The fused kernel's arithmetic, in xp calls."""
    xp = array_namespace(p)
    grad = g + decay * p
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad * grad
    return p - step_size * m / (xp.sqrt(v) + eps_hat), m, v


FUSED_STYLE = nn.Tail("fused-style", _relu_keeping_activation, _relu_backward_from_activation,
                      nn.softmax_ce_gradient, _adam_update)


def _gradients(backend, dtype, tail, chunk_size=None):
    params, X, Y = small_problem(backend, dtype, sizes=(12, 9, 7, 10), rows=33)
    gradients = compiled(backend, nn.loss_and_gradients, activation="relu", output="softmax",
                         loss="ce", chunk_size=chunk_size, with_loss=False, tail=tail)
    return [backend.to_numpy(g) for g in gradients(params, X, Y)[1]]


def _adam_step(params, state, X, Y, optimizer):
    _, grads = nn.loss_and_gradients(params, X, Y, "relu", "softmax", "ce")
    return optimizer.update(params, grads, state)


def _adam_steps(backend, dtype, fused_update, steps=5):
    params, X, Y = small_problem(backend, dtype, sizes=(12, 9, 10), rows=20)
    optimizer = Adam(lr=0.01, weight_decay=1e-3, fused_update=fused_update)
    state = optimizer.init(params)
    step = compiled(backend, _adam_step, optimizer=optimizer)
    for _ in range(steps):
        params, state = step(params, state, X, Y)
    return [backend.to_numpy(p) for p in params]


def test_a_tail_with_other_slopes_gives_the_same_gradients(backend_dtype):
    backend, dtype = backend_dtype
    reference = _gradients(backend, dtype, nn.ARRAY_API_TAIL, chunk_size=8)
    for got, want in zip(_gradients(backend, dtype, FUSED_STYLE, chunk_size=8), reference):
        assert_close(got, want, dtype)


def test_the_fused_adam_arithmetic_equals_adam(backend_dtype):
    """η·m̂/(√v̂ + ε) rewritten as (η√(1-β₂ᵗ)/(1-β₁ᵗ))·m/(√v + ε√(1-β₂ᵗ)), with L2 decay."""
    backend, dtype = backend_dtype
    for got, want in zip(_adam_steps(backend, dtype, _adam_update),
                         _adam_steps(backend, dtype, None)):
        assert_close(got, want, dtype, scale=10)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_numpys_adam_equals_adam_and_writes_to_nothing_it_is_given(dtype):
    """NumPy's tail: Adam through out= into fresh arrays, the fused form's arithmetic. Its
    steps equal optim.Adam's (with L2 decay), and p, g, m and v are left as they were."""
    from mnist_xp.backends.numpy import NUMPY_TAIL

    backend = make_backend("numpy")
    assert backend.tail is NUMPY_TAIL
    for got, want in zip(_adam_steps(backend, dtype, NUMPY_TAIL.adam_update),
                         _adam_steps(backend, dtype, None)):
        assert_close(got, want, dtype, scale=10)
    rng = np.random.default_rng(5)
    p, g, m, v = (rng.standard_normal((7, 5)).astype(dtype) for _ in range(4))
    v = v * v
    given = [a.copy() for a in (p, g, m, v)]
    step_size, eps_hat = np.asarray(0.01, dtype), np.asarray(1e-8, dtype)
    new = NUMPY_TAIL.adam_update(p, g, m, v, step_size, 0.9, 0.999, eps_hat, 1e-3)
    want = _adam_update(p, g, m, v, step_size, 0.9, 0.999, eps_hat, 1e-3)
    for got, expected in zip(new, want):
        assert got.dtype == dtype
        assert_close(got, expected, dtype)
    for before, after in zip(given, (p, g, m, v)):
        np.testing.assert_array_equal(before, after)
    assert not any(np.shares_memory(a, b) for a in new for b in (p, g, m, v))


@pytest.mark.parametrize("nesterov", [False, True], ids=["momentum", "nesterov"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_numpys_momentum_equals_momentum_and_writes_to_nothing_it_is_given(dtype, nesterov):
    """NumPy's momentum and Nesterov updates, with L2 decay, give optim's exact numbers over 5
    steps (the same operations in the same order), leaving their arguments as they were."""
    from mnist_xp.backends.numpy import NUMPY_TAIL
    from mnist_xp.optim import make_optimizer

    name = "nesterov" if nesterov else "momentum"
    rng = np.random.default_rng(6)
    params = [rng.standard_normal((6, 4)).astype(dtype), rng.standard_normal(4).astype(dtype)]
    runs = []
    for fused in (NUMPY_TAIL, None):
        optimizer = make_optimizer(name, 0.05, weight_decay=1e-3, momentum=0.9, fused=fused)
        p, state = params, optimizer.init(params)
        for step in range(5):
            grads = [np.sin(a * (step + 1)).astype(dtype) for a in params]
            arguments = (*p, *grads, *state["velocity"])
            given = [a.copy() for a in arguments]
            p, state = optimizer.update(p, grads, state)
            for before, after in zip(given, arguments):
                np.testing.assert_array_equal(before, after)
        runs.append(p)
    for got, want in zip(*runs):
        assert got.dtype == dtype
        np.testing.assert_array_equal(got, want)
    p, g, v = (rng.standard_normal((3, 5)).astype(dtype) for _ in range(3))
    new = NUMPY_TAIL.momentum_update(p, g, v, 0.1, 0.9, 1e-3, nesterov)
    assert not any(np.shares_memory(a, b) for a in new for b in (p, g, v))


@pytest.fixture(params=[pytest.param("float32", marks=GPU), pytest.param("float64", marks=GPU)])
def cupy_dtype(request):
    return make_backend("cupy-cuda"), request.param


def test_cupy_chooses_the_fused_tail(cupy_dtype, monkeypatch):
    backend, _ = cupy_dtype
    assert backend.tail.name == "cupy-fused"
    monkeypatch.setenv("MNIST_XP_FUSED", "0")
    assert backend.tail is nn.ARRAY_API_TAIL


def test_cupy_fused_kernels_equal_the_array_api(cupy_dtype):
    from mnist_xp.backends.cupy_kernels import cupy_tail

    backend, dtype = cupy_dtype
    fused = cupy_tail()
    rng = np.random.default_rng(4)
    Z = rng.standard_normal((257, 33)).astype(dtype) * 5
    b = rng.standard_normal(33).astype(dtype)
    A, slope = fused.bias_relu(backend.asarray(Z.copy()), backend.asarray(b))
    want_A, want_slope = nn.bias_relu(Z.copy(), b)
    assert_close(backend.to_numpy(A), want_A, dtype)
    dA = rng.standard_normal(Z.shape).astype(dtype)
    got = fused.relu_backward(backend.asarray(dA.copy()), slope)
    assert_close(backend.to_numpy(got), dA * want_slope, dtype)
    logits = (rng.standard_normal((301, 10)) * 30).astype(dtype)
    Y = np.eye(10, dtype=dtype)[rng.integers(0, 10, 301)]
    got = fused.softmax_ce_gradient(backend.asarray(logits), backend.asarray(Y), 1000)
    assert_close(backend.to_numpy(got), nn.softmax_ce_gradient(logits, Y, 1000), dtype)


def test_cupy_fused_step_equals_the_array_api_step(cupy_dtype):
    from mnist_xp.backends.cupy_kernels import cupy_tail

    backend, dtype = cupy_dtype
    for got, want in zip(_gradients(backend, dtype, cupy_tail()),
                         _gradients(backend, dtype, nn.ARRAY_API_TAIL)):
        assert_close(got, want, dtype)
    for got, want in zip(_adam_steps(backend, dtype, cupy_tail().adam_update),
                         _adam_steps(backend, dtype, None)):
        assert_close(got, want, dtype, scale=10)


def test_cupy_fused_step_in_chunks_equals_the_array_api_step(cupy_dtype):
    from mnist_xp.backends.cupy_kernels import cupy_tail

    backend, dtype = cupy_dtype
    for got, want in zip(_gradients(backend, dtype, cupy_tail(), chunk_size=8),
                         _gradients(backend, dtype, nn.ARRAY_API_TAIL)):
        assert_close(got, want, dtype)


def test_cupy_fused_kernels_keep_nan_where_the_reference_does(cupy_dtype):
    """Divergence must look the same on the GPU: NaN through ReLU, its backward and softmax."""
    from mnist_xp.backends.cupy_kernels import cupy_tail

    backend, dtype = cupy_dtype
    fused = cupy_tail()
    Z = np.array([[np.nan, -1.0, 2.0], [np.inf, -np.inf, 0.5]], dtype=dtype)
    b = np.array([0.0, 0.0, np.nan], dtype=dtype)
    A, slope = fused.bias_relu(backend.asarray(Z.copy()), backend.asarray(b))
    want_A, want_slope = nn.bias_relu(Z.copy(), b)
    np.testing.assert_array_equal(backend.to_numpy(A), want_A)  # NaN where the reference has it
    dA = np.array([[1.0, np.nan, 3.0], [np.nan, 1.0, 1.0]], dtype=dtype)
    got = fused.relu_backward(backend.asarray(dA.copy()), slope)
    np.testing.assert_array_equal(np.isnan(backend.to_numpy(got)), np.isnan(dA * want_slope))
    logits = np.zeros((2, 10), dtype=dtype)
    logits[0, 3] = np.nan
    Y = np.eye(10, dtype=dtype)[[1, 2]]
    got = backend.to_numpy(fused.softmax_ce_gradient(backend.asarray(logits),
                                                     backend.asarray(Y), 2))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(nn.softmax_ce_gradient(logits, Y, 2)))


@pytest.mark.gpu
@pytest.mark.skipif(not cupy_available(), reason="no CUDA GPU for CuPy")
def test_a_pool_limit_gives_the_out_of_memory_message(tiny_data):
    import cupy

    from mnist_xp import train
    from mnist_xp.errors import DeviceMemoryError

    backend = make_backend("cupy-cuda")
    pool = cupy.get_default_memory_pool()
    with backend.activate():
        pool.free_all_blocks()
        pool.set_limit(size=256 * 1024)  # far less than the 240-image training set
        try:
            with pytest.raises(DeviceMemoryError, match=r"--chunk-size \d+"):
                train(tiny_data, backend, "best", steps=2)
        finally:
            pool.set_limit(size=0)
