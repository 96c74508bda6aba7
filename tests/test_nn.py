"""The math: gradient checks, numerical stability, optimizers, chunked full batch."""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import pytest

from mnist_xp import nn
from mnist_xp.backends import numpy_backend
from mnist_xp.optim import SGD, Adam, Momentum

from conftest import assert_close, compiled

PAIRS = [("softmax", "ce"), ("sigmoid", "mse"), ("softmax", "mse")]


def small_problem(backend, dtype, sizes=(6, 5, 4, 10), rows=7, seed=0):
    rng = np.random.default_rng(seed)
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        params += [rng.standard_normal((fan_in, fan_out)), 0.1 * rng.standard_normal(fan_out)]
    X = rng.standard_normal((rows, sizes[0]))
    labels = rng.integers(0, sizes[-1], rows)
    Y = np.eye(sizes[-1])[labels]
    to = lambda a: backend.asarray(a.astype(dtype))  # noqa: E731
    return [to(p) for p in params], to(X), to(Y)


@functools.cache
def central_differences(activation: str, output: str, loss: str) -> tuple[float, list]:
    """The loss and (L(θ+h) - L(θ-h)) / 2h for every parameter of small_problem, in float64 on
    NumPy: the reference every backend's backward pass must match."""
    backend = numpy_backend()
    params, X, Y = small_problem(backend, "float64")
    value = float(nn.loss_and_gradients(params, X, Y, activation, output, loss)[0])
    h = 1e-6
    numeric = []
    for index, p in enumerate(params):
        slopes = np.zeros_like(p)
        for position in itertools.product(*map(range, p.shape)):
            values = []
            for sign in (1, -1):
                shifted = [q.copy() for q in params]
                shifted[index][position] += sign * h
                values.append(float(nn.loss_and_gradients(shifted, X, Y, activation, output,
                                                          loss)[0]))
            slopes[position] = (values[0] - values[1]) / (2 * h)
        numeric.append(slopes)
    return value, numeric


@pytest.mark.parametrize("activation", nn.HIDDEN_ACTIVATIONS)
@pytest.mark.parametrize("output,loss", PAIRS)
def test_gradients_match_central_differences(backend64, activation, output, loss):
    """Every backward pass, on every backend (compiled as training runs it), against central
    differences of the loss, in float64, on two hidden layers."""
    params, X, Y = small_problem(backend64, "float64")
    gradients = compiled(backend64, nn.loss_and_gradients, activation=activation, output=output,
                         loss=loss)
    value, grads = gradients(params, X, Y)
    want_value, numeric = central_differences(activation, output, loss)
    assert float(value) == pytest.approx(want_value, rel=1e-12)
    for index, (got, want) in enumerate(zip(grads, numeric)):
        np.testing.assert_allclose(backend64.to_numpy(got), want, rtol=1e-5, atol=1e-8,
                                   err_msg=f"parameter {index}")


def test_bias_gradient_is_per_unit(backend_dtype):
    """db = Σ_rows dZ, one value per unit (the notebooks summed over every axis)."""
    backend, dtype = backend_dtype
    params, X, Y = small_problem(backend, dtype)
    _, grads = nn.loss_and_gradients(params, X, Y, "tanh", "softmax", "ce")
    db = backend.to_numpy(grads[-1])
    assert db.shape == (10,)
    assert len(np.unique(np.round(db, 6))) > 1


@pytest.mark.parametrize("output,loss", PAIRS)
def test_extreme_logits_stay_finite(backend_dtype, output, loss):
    backend, dtype = backend_dtype
    logits = np.zeros((3, 10))
    logits[0, 0], logits[0, 1] = 1e4, -1e4
    logits[1, 2], logits[1, 3] = -1e4, 1e4
    logits[2, :] = -1e4
    Y = np.eye(10)[[0, 2, 9]]
    value, dZ = nn.loss_and_logit_gradient(backend.asarray(logits.astype(dtype)),
                                           backend.asarray(Y.astype(dtype)), output, loss)
    assert math.isfinite(float(value))
    assert np.all(np.isfinite(backend.to_numpy(dZ)))
    probs = backend.to_numpy(nn.output_probabilities(output, backend.asarray(logits.astype(dtype))))
    assert np.all(np.isfinite(probs))
    if loss == "ce":
        # row 0 is right with margin 1e4, row 1 wrong by 2e4, row 2 uniform: log 10
        assert float(value) == pytest.approx((0 + 2e4 + math.log(10)) / 3, rel=1e-5)
        np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-6)


def test_chunked_gradient_is_the_full_batch_gradient(backend_dtype):
    backend, dtype = backend_dtype
    params, X, Y = small_problem(backend, dtype, rows=23)
    fixed = {"activation": "relu", "output": "softmax", "loss": "ce"}
    whole_loss, whole = compiled(backend, nn.loss_and_gradients, **fixed)(params, X, Y)
    for chunk in (1, 5, 8, 23, 100):
        loss, chunked = compiled(backend, nn.loss_and_gradients, chunk_size=chunk, **fixed)(
            params, X, Y)
        assert_close(float(loss), float(whole_loss), dtype)
        for a, b in zip(chunked, whole):
            assert_close(backend.to_numpy(a), backend.to_numpy(b), dtype)


def test_accuracy_and_one_hot(backend_dtype):
    backend, dtype = backend_dtype
    xp = backend.xp
    labels = backend.asarray(np.array([0, 3, 9, 3], dtype=np.int64))
    Y = nn.one_hot(labels, getattr(xp, dtype))
    np.testing.assert_array_equal(backend.to_numpy(Y), np.eye(10)[[0, 3, 9, 3]])
    logits = backend.asarray(np.eye(10)[[0, 3, 1, 2]].astype(dtype))
    assert float(nn.accuracy(logits, labels)) == 0.5


def one_param(backend, dtype, values):
    return [backend.asarray(np.asarray(values, dtype=dtype))]


def _steps(optimizer, params, grads, count):
    """count updates with the same gradients; returns the parameters and the state."""
    state = optimizer.init(params)
    for _ in range(count):
        params, state = optimizer.update(params, grads, state)
    return params, state


def test_sgd_and_momentum_updates(backend_dtype):
    backend, dtype = backend_dtype
    g = one_param(backend, dtype, [[1.0, -2.0]])
    p, state = _steps(SGD(lr=0.1), one_param(backend, dtype, [[0.5, 0.5]]), g, 1)
    assert_close(backend.to_numpy(p[0]), [[0.4, 0.7]], dtype)
    assert float(state["t"]) == 1
    # v = g, then v = 0.9 g + g = 1.9 g: θ = -0.1 (g + 1.9 g)
    p, state = _steps(Momentum(lr=0.1, momentum=0.9), one_param(backend, dtype, [[0, 0]]), g, 2)
    assert_close(backend.to_numpy(p[0]), [[-0.29, 0.58]], dtype)
    assert_close(backend.to_numpy(state["velocity"][0]), [[1.9, -3.8]], dtype)


def test_updates_leave_their_arguments_alone(backend_dtype):
    """update() returns new arrays and changes none it was given: on NumPy an in-place
    update would pass this test's first half only by luck of aliasing, on JAX never."""
    backend, dtype = backend_dtype
    for optimizer in (SGD(lr=0.1, weight_decay=0.1), Momentum(lr=0.1), Adam(lr=0.1)):
        p = one_param(backend, dtype, [[0.5, -0.5]])
        g = one_param(backend, dtype, [[1.0, 2.0]])
        state = optimizer.init(p)
        before = [backend.to_numpy(a).copy() for a in (p[0], g[0], *state.get("m", []))]
        new, new_state = optimizer.update(p, g, state)
        after = [backend.to_numpy(a) for a in (p[0], g[0], *state.get("m", []))]
        for was, now in zip(before, after):
            np.testing.assert_array_equal(was, now)
        assert not np.array_equal(backend.to_numpy(new[0]), before[0])  # the weights moved
        assert float(new_state["t"]) == 1 and float(state["t"]) == 0


def test_adam_bias_correction(backend_dtype):
    """With bias correction the first step is lr·g/(|g| + ε) ≈ lr·sign(g) whatever |g| is."""
    backend, dtype = backend_dtype
    gradient = np.array([[1e-3, -5.0, 200.0]])
    step = -0.01 * gradient / (np.abs(gradient) + 1e-8)  # ≈ [-0.01, 0.01, -0.01]
    g = one_param(backend, dtype, gradient)
    p, _ = _steps(Adam(lr=0.01), one_param(backend, dtype, np.zeros((1, 3))), g, 1)
    assert_close(backend.to_numpy(p[0]), step, dtype)
    # the same gradient again: m̂ = g and v̂ = g² once more
    p, state = _steps(Adam(lr=0.01), one_param(backend, dtype, np.zeros((1, 3))), g, 2)
    assert_close(backend.to_numpy(p[0]), 2 * step, dtype)
    assert float(state["t"]) == 2


def test_weight_decay_spares_biases(backend_dtype):
    backend, dtype = backend_dtype
    W = backend.asarray(np.ones((2, 2), dtype=dtype))
    b = backend.asarray(np.ones(2, dtype=dtype))
    zeros = [backend.asarray(np.zeros((2, 2), dtype=dtype)), backend.asarray(np.zeros(2, dtype))]
    (W, b), _ = _steps(SGD(lr=0.5, weight_decay=0.1), [W, b], zeros, 1)
    assert_close(backend.to_numpy(W), np.full((2, 2), 0.95), dtype)
    assert_close(backend.to_numpy(b), np.ones(2), dtype)
