"""Shifted copies of the training images, for training on more rows than the data has (and, on a
cluster, more than one machine holds: each worker builds its own rows).

Copy 0 is the training set as it is; copy k > 0 moves every image by up to SHIFT pixels down or
up and right or left, drawn from default_rng([seed, 2, k]) for the whole set at once, so a row's
copy is the same whichever machine, chunk or backend builds it. The labels do not change.
"""

from __future__ import annotations

import numpy as np

from .data import PIXELS

SIDE = 28
SHIFT = 2


def shifts(rows: int, copy: int, seed: int) -> np.ndarray:
    """(rows, 2) vertical and horizontal shifts of copy `copy` of a set of `rows` images."""
    if copy == 0:
        return np.zeros((rows, 2), np.int64)
    return np.random.default_rng([seed, 2, copy]).integers(-SHIFT, SHIFT + 1, size=(rows, 2))


def shifted(images: np.ndarray, moves: np.ndarray) -> np.ndarray:
    """Each (784,) uint8 image moved by its (dy, dx), the pixels moved in from outside black."""
    out = np.zeros_like(images)
    pictures, moved = images.reshape(-1, SIDE, SIDE), out.reshape(-1, SIDE, SIDE)
    for dy, dx in {(int(a), int(b)) for a, b in moves}:
        rows = np.flatnonzero((moves[:, 0] == dy) & (moves[:, 1] == dx))
        src_y, dst_y = slice(max(0, -dy), SIDE - max(0, dy)), slice(max(0, dy), SIDE - max(0, -dy))
        src_x, dst_x = slice(max(0, -dx), SIDE - max(0, dx)), slice(max(0, dx), SIDE - max(0, -dx))
        moved[rows, dst_y, dst_x] = pictures[rows, src_y, src_x]
    return out.reshape(-1, PIXELS)


def copy_rows(images: np.ndarray, copy: int, seed: int, start: int, stop: int) -> np.ndarray:
    """Rows start..stop of copy `copy` of the whole set `images` (N, 784)."""
    return shifted(images[start:stop], shifts(len(images), copy, seed)[start:stop])


def copies(images: np.ndarray, labels: np.ndarray, count: int, seed: int
           ) -> tuple[np.ndarray, np.ndarray]:
    """`count` copies of the set one after the other, and their labels: count·N rows."""
    if count == 1:
        return images, labels
    n = len(images)
    return (np.concatenate([copy_rows(images, k, seed, 0, n) for k in range(count)]),
            np.tile(labels, count))
