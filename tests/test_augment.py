"""Shifted copies of the training set (mnist_xp.augment): copy 0 is the data, the others are
the data moved by up to two pixels, the same whoever builds them and in whatever pieces."""

from __future__ import annotations

import numpy as np

from mnist_xp import augment


def test_copy_zero_is_the_data_and_the_others_are_shifted(tiny_data):
    images, labels = tiny_data.train_images, tiny_data.train_labels
    many, many_labels = augment.copies(images, labels, 3, seed=5)
    assert many.shape == (3 * len(images), 784) and many.dtype == np.uint8
    np.testing.assert_array_equal(many[:len(images)], images)
    np.testing.assert_array_equal(many_labels, np.tile(labels, 3))
    moves = augment.shifts(len(images), 1, seed=5)
    assert np.abs(moves).max() <= augment.SHIFT and len({tuple(m) for m in moves}) > 5
    for row in (0, 7, len(images) - 1):
        dy, dx = moves[row]
        picture = images[row].reshape(28, 28).astype(int)
        want = np.zeros_like(picture)
        want[max(0, dy):28 + min(0, dy), max(0, dx):28 + min(0, dx)] = \
            picture[max(0, -dy):28 - max(0, dy), max(0, -dx):28 - max(0, dx)]
        np.testing.assert_array_equal(many[len(images) + row].reshape(28, 28), want)


def test_a_chunk_of_a_copy_is_the_same_rows_of_the_whole_copy(tiny_data):
    images = tiny_data.train_images
    whole = augment.copy_rows(images, 2, 9, 0, len(images))
    np.testing.assert_array_equal(augment.copy_rows(images, 2, 9, 50, 90), whole[50:90])
    assert not np.array_equal(augment.copy_rows(images, 2, 10, 0, len(images)), whole)
