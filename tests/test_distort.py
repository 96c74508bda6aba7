"""Distortions (mnist_xp/distort.py): reproducible from (seed, epoch, row) alone, equal on every
backend, the resampling and the random numbers right, digits still their digits, and runs that
use them resumable bit for bit, locally and on a cluster."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mnist_xp import Config, train
from mnist_xp.backends import numpy_backend
from mnist_xp.checkpoint import load_checkpoint
from mnist_xp.distort import DISTORTIONS, SIDE, Distortion, _basis, _bilinear, distort, uniform
from mnist_xp.errors import Interrupted

from conftest import assert_close

HOW = Distortion(alpha=34.0, sigma=4.0, rotate=10.0, scale=0.1, shear=0.1, shift=1.5)


def _images(n=12, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, SIDE * SIDE), dtype=np.float32)


def test_a_distortion_is_a_function_of_seed_epoch_and_row_alone():
    X = _images()
    rows = np.arange(100, 112)
    once = distort(X, rows, 7, 3, HOW)
    assert np.array_equal(once, distort(X, rows, 7, 3, HOW))
    picked = [2, 9, 5]  # the same rows in another batch, in another order: the same images
    assert np.array_equal(distort(X[picked], rows[picked], 7, 3, HOW), once[picked])
    for other in ((8, 3), (7, 4)):  # another seed, another epoch: other distortions
        changed = np.abs(distort(X, rows, *other, HOW) - once).max(axis=1)
        assert (changed > 0.05).all()
    assert not np.array_equal(X, once)
    assert np.array_equal(distort(X, rows, 7, 3, Distortion(alpha=0.0)), X)  # no distortion


def test_every_backend_distorts_as_numpy_does(backend_dtype):
    backend, dtype = backend_dtype
    X = _images().astype(dtype)
    rows = np.arange(40, 52)
    want = distort(X, rows, 1, 2, HOW)
    got = backend.to_numpy(distort(backend.asarray(X), backend.asarray(rows), 1, 2, HOW))
    assert got.dtype == np.dtype(dtype)
    # the smoothed fields differ in their last bits (sums in another order): the bilinear
    # resampling is continuous, so the images differ as little
    assert_close(got, want, dtype, scale=10)


def test_the_standard_alone_suffices():
    """array-api-strict: nothing beyond the Array API standard is used."""
    xp = pytest.importorskip("array_api_strict")
    X = _images()
    rows = np.arange(12)
    got = distort(xp.asarray(X), xp.asarray(rows), 0, 0, HOW)
    np.testing.assert_array_equal(np.asarray(got), distort(X, rows, 0, 0, HOW))


def test_bilinear_resampling_shifts_and_blends_with_zeros_outside():
    image = np.arange(SIDE * SIDE, dtype=np.float64).reshape(1, SIDE, SIDE)
    grid = np.arange(SIDE, dtype=np.float64)
    qy = np.broadcast_to(grid[:, None], (1, SIDE, SIDE)) + 1.0  # sample one row down
    qx = np.broadcast_to(grid[None, :], (1, SIDE, SIDE)) + 0.5  # and half a column right
    got = _bilinear(np, image, qy, qx)[0]
    down = np.vstack([image[0, 1:], np.zeros((1, SIDE))])
    right = np.hstack([down[:, 1:], np.zeros((SIDE, 1))])
    np.testing.assert_allclose(got, (down + right) / 2)
    far = _bilinear(np, image, qy + 100.0, qx - 100.0)  # all outside: zeros
    assert not far.any()


def test_the_random_numbers_are_uniform_and_independent_of_the_backend():
    key = np.arange(2000, dtype=np.int32) * 7919
    u = uniform(np, key, 64, np.float64)
    assert u.min() >= 0 and u.max() < 1
    counts, _ = np.histogram(u, bins=16, range=(0, 1))
    expected = u.size / 16
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 50, chi2  # 15 degrees of freedom: 50 is far out in the tail
    assert abs(np.corrcoef(u[:, :-1].ravel(), u[:, 1:].ravel())[0, 1]) < 0.01


def test_the_small_noise_gives_the_smoothed_white_noise_of_simard():
    """G·U·Gᵀ for white noise U, uniform on (-1, 1), against V·(ΛZΛ)·Vᵀ for K×K Gaussian Z of
    U's variance: the displacement fields have the same variance, here measured."""
    sigma = 4.0
    i = np.arange(SIDE)
    G = np.exp(-((i[:, None] - i[None, :]) ** 2) / (2 * sigma**2)) / (math.sqrt(2 * math.pi)
                                                                       * sigma)
    rng = np.random.default_rng(0)
    U = rng.uniform(-1, 1, (4000, SIDE, SIDE))
    full = G @ U @ G.T
    X = np.zeros((4000, SIDE * SIDE))
    how = Distortion(alpha=1.0, sigma=sigma)
    # the displacement the elastic part makes: distort a ramp whose value is its row number
    ramp = np.broadcast_to(np.arange(SIDE, dtype=np.float64)[:, None], (SIDE, SIDE))
    X[:] = ramp.ravel()
    moved = distort(X, np.arange(4000), 0, 0, how).reshape(4000, SIDE, SIDE) - ramp
    inner = (slice(None), slice(6, 22), slice(6, 22))  # away from the frame's clamping
    ratio = moved[inner].std() / full[inner].std()
    assert 0.95 < ratio < 1.05, ratio
    assert _basis(sigma)[1] < 10


def test_distorted_digits_are_still_their_digits(real_data_dir):
    """A network trained for two epochs on distorted MNIST reads distorted test digits nearly
    as well as plain ones: the distortions change how a digit is written, not which digit it
    is. (A network trained on plain digits alone does not: about 70% on distorted ones, which
    is why distortions help. The control, rotations up to 180°, does change the digits.)"""
    from mnist_xp.datasets import load_dataset
    from mnist_xp.model import scale_images

    data = load_dataset("mnist", real_data_dir)
    backend = numpy_backend()
    config = Config(hidden=(128,), optimizer="nesterov", lr=0.05, batch_size=100, epochs=2,
                    schedule="cosine", distort="both")
    model, _ = train(data, backend, config, eval_every=10_000)
    images, labels = data.split("test")
    X = backend.to_numpy(scale_images(backend, images[:3000], "float32"))

    def accuracy(how):
        bent = X if how is None else distort(X, np.arange(3000), 5, 5, how)
        return float((model.predict(bent) == labels[:3000]).mean())

    plain = accuracy(None)
    assert plain > 0.95
    for name in ("elastic", "affine", "both"):
        assert accuracy(DISTORTIONS[name]) > plain - 0.12, name
    assert accuracy(Distortion(alpha=0.0, rotate=180.0)) < plain - 0.3


@pytest.mark.parametrize("batch_size", [None, 64])
def test_a_distorted_run_stopped_and_resumed_equals_the_run_straight_through(tiny_data,
                                                                              tmp_path,
                                                                              batch_size):
    backend = numpy_backend()
    config = Config(hidden=(16,), optimizer="nesterov", lr=0.05, batch_size=batch_size,
                    steps=10, distort="both")
    straight, _ = train(tiny_data, backend, config, eval_every=5)
    plain, _ = train(tiny_data, backend, config.replace(distort="none"), eval_every=5)
    assert not np.array_equal(plain.host_params()[0], straight.host_params()[0])
    path = tmp_path / "half.npz"
    asked = []
    with pytest.raises(Interrupted):
        train(tiny_data, backend, config, eval_every=5, checkpoint=path,
              should_stop=lambda: (asked.append(1), len(asked) == 6)[1])
    resumed, _ = train(tiny_data, backend, config, eval_every=5, resume=load_checkpoint(path))
    for got, want in zip(resumed.host_params(), straight.host_params()):
        np.testing.assert_array_equal(got, want)
