"""Made-up digits of MNIST's shape and dtype, and their IDX files: for checks that need no
download (info --check, bench's step timings, the tests, bench/gpu_checks.py).

Ten random prototypes, one per class, each row its class's prototype plus uniform noise in
±60 grey levels: learnable in a few steps, and as costly to compute with as real digits.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from .data import CLASSES, IMAGE_MAGIC, LABEL_MAGIC, PIXELS, SIDE, Dataset
from .datasets import SPLIT_FILES

NOISE = 60
BLOCK = 8192  # rows added up at a time: 60,000 rows need no second int64 copy


def synthetic_digits(n_train: int = 240, n_test: int = 120, seed: int = 0) -> Dataset:
    """n_train and n_test rows; the labels cycle through the classes (0, 1, ..., 9, 0, ...)."""
    rng = np.random.default_rng(seed)
    prototypes = rng.integers(0, 256, size=(CLASSES, PIXELS))

    def split(rows: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.arange(rows) % CLASSES
        images = rng.integers(-NOISE, NOISE + 1, size=(rows, PIXELS))
        for start in range(0, rows, BLOCK):
            images[start:start + BLOCK] += prototypes[labels[start:start + BLOCK]]
        return np.clip(images, 0, 255, out=images).astype(np.uint8), labels.astype(np.uint8)

    return Dataset(*split(n_train), *split(n_test), name="synthetic")


def idx_images_bytes(images: np.ndarray, magic: int = IMAGE_MAGIC, rows: int = SIDE,
                     cols: int = SIDE) -> bytes:
    """uint8 images (N, 784) as an IDX file's bytes (the header's fields can be set, for
    tests of malformed files)."""
    return struct.pack(">IIII", magic, len(images), rows, cols) + images.astype(np.uint8).tobytes()


def idx_labels_bytes(labels: np.ndarray, magic: int = LABEL_MAGIC) -> bytes:
    return struct.pack(">II", magic, len(labels)) + np.asarray(labels, dtype=np.uint8).tobytes()


def write_idx_folder(folder: Path, data: Dataset, gz: bool = True) -> dict[str, bytes]:
    """data's four IDX files in folder (gzipped, as the mirrors serve them); returns each file's
    payload by name."""
    folder.mkdir(parents=True, exist_ok=True)
    payloads = dict(zip(SPLIT_FILES, (
        idx_images_bytes(data.train_images), idx_labels_bytes(data.train_labels),
        idx_images_bytes(data.test_images), idx_labels_bytes(data.test_labels))))
    for stem, payload in payloads.items():
        path = folder / (stem + (".gz" if gz else ""))
        path.write_bytes(gzip.compress(payload) if gz else payload)
    return payloads
