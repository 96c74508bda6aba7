"""Training-image distortions written once against the Array API, so they run where the data
lives: elastic distortions (Simard, Steinkraus & Platt 2003) and a small random affine map,
fresh for every image in every epoch, the same on every backend, and reproducible from
(seed, epoch, image) alone, so a resumed run distorts exactly as the run straight through.

An image's distortion moves each output pixel p to sample the original at

    q = c + M·(p - c) + s + α·(G·Uₓ·Gᵀ, G·U_y·Gᵀ)(p)

with c the centre, M = rotation·scale·shear and s a shift (the affine part), and the elastic
part a displacement field: white noise U, uniform on (-1, 1) per pixel, smoothed by a
Gaussian of width σ (the 28×28 matrix G applies it along rows and columns) and scaled by α.
The output is the original sampled at q by bilinear interpolation, zero outside.

Random numbers. The standard has no random module, and copying fresh random fields from the
host every step would cost a GPU more than the distortion itself. Each number is a hash of
its counter, (seed, epoch, image, which number), in 32-bit integer arithmetic (Mueller's
integer hash, wrapping like every Array API library wraps int32), then turned into floats:
no state, the same bits everywhere. The noise itself is drawn small: G is symmetric, G = VΛVᵀ,
and VᵀUV is again white noise, so G·U·Gᵀ = V·(ΛZΛ)·Vᵀ for white noise Z of U's variance;
keeping the K columns of V whose eigenvalues are not negligible (K = 6 at σ = 4 leaves out
0.1% of the field's variance) draws K² numbers per field instead of 784. Z is
Gaussian (Box-Muller), which VᵀUV is very nearly for a 28×28 U.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import numpy as np
from array_api_compat import array_namespace, device

SIDE = 28
MASK23 = (1 << 23) - 1


class Distortion(NamedTuple):
    """How much to distort: elastic α (pixels) and σ (pixels), the affine ranges (rotation in
    degrees, relative scale and shear, shift in pixels: each drawn uniformly in ±range)."""

    alpha: float = 34.0
    sigma: float = 4.0
    rotate: float = 0.0
    scale: float = 0.0
    shear: float = 0.0
    shift: float = 0.0

    def describe(self) -> str:
        parts = []
        if self.alpha:
            parts.append(f"elastic α={self.alpha:g} σ={self.sigma:g}")
        if self.rotate or self.scale or self.shear or self.shift:
            parts.append(f"affine ±{self.rotate:g}°, scale ±{self.scale:g}, shear "
                         f"±{self.shear:g}, shift ±{self.shift:g} px")
        return " + ".join(parts)

    @property
    def elastic(self) -> bool:
        return self.alpha > 0

    def basis(self) -> tuple[np.ndarray, np.ndarray]:
        """(V_K Λ_K as a 28×K matrix, K) for this σ (see the module's docstring)."""
        return _basis(self.sigma)


# --distort's choices: Simard's elastic distortions (α = 34, σ = 4 on 28×28 digits), a small
# affine map, and both (each a little milder, since they add up)
DISTORTIONS: dict[str, Distortion | None] = {
    "none": None,
    "elastic": Distortion(alpha=34.0, sigma=4.0),
    "affine": Distortion(alpha=0.0, rotate=12.0, scale=0.12, shear=0.15, shift=2.0),
    "both": Distortion(alpha=30.0, sigma=4.0, rotate=8.0, scale=0.08, shear=0.1, shift=1.0),
}


@functools.lru_cache(maxsize=8)
def _basis(sigma: float, kept: float = 1e-3) -> tuple[np.ndarray, int]:
    """V_K·Λ_K of the Gaussian smoothing matrix G (28×28, each row the Gaussian weights of
    width σ, truncated at the image's edge), with K the fewest eigenvalues whose squares
    hold all but `kept` of the sum of squares (the smoothed field's variance)."""
    i = np.arange(SIDE)
    G = np.exp(-((i[:, None] - i[None, :]) ** 2) / (2 * sigma**2)) / (math.sqrt(2 * math.pi)
                                                                       * sigma)
    values, vectors = np.linalg.eigh(G)
    order = np.argsort(-np.abs(values))
    values, vectors = values[order], vectors[:, order]
    energy = np.cumsum(values**2) / np.sum(values**2)
    k = int(np.searchsorted(energy, 1 - kept) + 1)
    return vectors[:, :k] * values[:k], k


def _hash(x: Any, xp: Any) -> Any:
    """Mueller's 32-bit integer hash of each int32 in x, in wrapping int32 arithmetic."""
    x = xp.bitwise_xor(x, xp.bitwise_right_shift(x, 16) & 0xFFFF)
    x = x * 0x45D9F3B
    x = xp.bitwise_xor(x, xp.bitwise_right_shift(x, 16) & 0xFFFF)
    x = x * 0x45D9F3B
    return xp.bitwise_xor(x, xp.bitwise_right_shift(x, 16) & 0xFFFF)


def uniform(xp: Any, key: Any, count: int, dtype: Any) -> Any:
    """(rows, count) floats in [0, 1), 23 random bits each: row r's are the hashes of the
    counters (key[r], 0..count-1). key: an int32 array (rows,), one key per image."""
    n = xp.arange(count, dtype=xp.int32, device=device(key))
    x = _hash(_hash(key[:, None] * 0x27D4EB2D + 0x165667B1, xp) + n[None, :] * 0x3C6EF372, xp)
    return xp.astype(x & MASK23, dtype) / float(1 << 23)


def image_keys(xp: Any, rows: Any, seed: int, epoch: int) -> Any:
    """One int32 key per image: its row number, mixed with the seed and the epoch."""
    base = _hash(xp.asarray([seed * 0x61C88647 + epoch * 0x2545F491 & 0x7FFFFFFF],
                            dtype=xp.int32, device=device(rows)), xp)
    return _hash(xp.astype(rows, xp.int32) ^ base, xp)


def distort(X: Any, rows: Any, seed: int, epoch: int, how: Distortion) -> Any:
    """The images X (n, 784), values in [0, 1], distorted; `rows` (n,) are their row numbers
    in the training set, which (with seed and epoch) decide each one's distortion."""
    xp = array_namespace(X)
    dtype, where = X.dtype, device(X)
    n = X.shape[0]
    V, k = how.basis() if how.elastic else (None, 0)
    draws = uniform(xp, image_keys(xp, rows, seed, epoch), 2 * k * k + 6, dtype)
    centre = (SIDE - 1) / 2
    grid = xp.arange(SIDE, dtype=dtype, device=where) - centre
    gy = xp.reshape(grid, (1, SIDE, 1))
    gx = xp.reshape(grid, (1, 1, SIDE))

    def pick(j: int) -> Any:  # per-image uniform in (-1, 1), shaped to broadcast on (n, 28, 28)
        return xp.reshape(2.0 * draws[:, 2 * k * k + j] - 1.0, (n, 1, 1))

    angle = math.radians(how.rotate) * pick(0)
    scale = 1.0 + how.scale * pick(1)
    shear = how.shear * pick(2)
    cos, sin = xp.cos(angle) * scale, xp.sin(angle) * scale
    qy = centre + cos * gy + (sin + shear) * gx + how.shift * pick(3)
    qx = centre - sin * gy + cos * gx + how.shift * pick(4)
    if how.elastic:
        basis = xp.asarray(V, dtype=dtype, device=where)
        u1, u2 = draws[:, : k * k], draws[:, k * k: 2 * k * k]
        # Box-Muller: two Gaussian fields of U's variance 1/3
        radius = xp.sqrt(-2.0 * xp.log(1.0 - u1)) / math.sqrt(3.0)
        fields = [xp.reshape(radius * f(2 * math.pi * u2), (n, k, k)) for f in (xp.cos, xp.sin)]
        dy, dx = (basis @ z @ xp.matrix_transpose(basis) for z in fields)
        qy = qy + how.alpha * dy
        qx = qx + how.alpha * dx
    return xp.reshape(_bilinear(xp, xp.reshape(X, (n, SIDE, SIDE)), qy, qx), (n, SIDE * SIDE))


def _bilinear(xp: Any, images: Any, qy: Any, qx: Any) -> Any:
    """images (n, 28, 28) sampled at the points (qy, qx), each (n, 28, 28), bilinearly, zero
    outside: the images are framed by a border of zeros, the points clamped into it."""
    n = images.shape[0]
    padded = SIDE + 2
    zeros_side = xp.zeros((n, SIDE, 1), dtype=images.dtype, device=device(images))
    framed = xp.concat([zeros_side, images, zeros_side], axis=2)
    zeros_row = xp.zeros((n, 1, padded), dtype=images.dtype, device=device(images))
    flat = xp.reshape(xp.concat([zeros_row, framed, zeros_row], axis=1), (-1,))
    low, high = xp.full_like(qy, -1.0), xp.full_like(qy, float(SIDE))  # the frame: -1, 28
    qy = xp.minimum(xp.maximum(qy, low), high)
    qx = xp.minimum(xp.maximum(qx, low), high)
    last = xp.full_like(qy, float(SIDE - 1))  # a point on the frame's far side: weight 1 there
    y0, x0 = xp.minimum(xp.floor(qy), last), xp.minimum(xp.floor(qx), last)
    wy, wx = qy - y0, qx - x0
    integral = xp.__array_namespace_info__().default_dtypes(device=device(images))["integral"]
    offset = xp.reshape(xp.arange(n, dtype=integral, device=device(images)) * padded * padded,
                        (n, 1, 1))
    top = offset + (xp.astype(y0, integral) + 1) * padded + xp.astype(x0, integral) + 1

    def at(index: Any) -> Any:
        return xp.reshape(xp.take(flat, xp.reshape(index, (-1,)), axis=0), index.shape)

    upper = (1 - wx) * at(top) + wx * at(top + 1)
    lower = (1 - wx) * at(top + padded) + wx * at(top + padded + 1)
    return (1 - wy) * upper + wy * lower
