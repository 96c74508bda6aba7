"""Small synthetic MNIST-format files for the tests: nothing here touches the network."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from mnist_xp.data import Dataset
from mnist_xp.datasets import SPLIT_FILES


def idx_images_bytes(images: np.ndarray, magic: int = 2051, rows: int = 28,
                     cols: int = 28) -> bytes:
    return struct.pack(">IIII", magic, len(images), rows, cols) + images.astype(np.uint8).tobytes()


def idx_labels_bytes(labels: np.ndarray, magic: int = 2049) -> bytes:
    return struct.pack(">II", magic, len(labels)) + np.asarray(labels, dtype=np.uint8).tobytes()


def write(path: Path, payload: bytes, gz: bool = True) -> Path:
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


def synthetic_dataset(n_train: int = 240, n_test: int = 120, seed: int = 0) -> Dataset:
    """Ten noisy prototype 'digits': learnable in a few steps, like MNIST in shape and dtype."""
    rng = np.random.default_rng(seed)
    prototypes = rng.integers(0, 256, size=(10, 784))

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.arange(n) % 10
        noise = rng.integers(-60, 61, size=(n, 784))
        return np.clip(prototypes[labels] + noise, 0, 255).astype(np.uint8), labels.astype(np.uint8)

    return Dataset(*split(n_train), *split(n_test), name="synthetic")


def write_dataset(folder: Path, data: Dataset, gz: bool = True) -> dict[str, bytes]:
    """Write the four IDX files; returns each file's payload by stem."""
    folder.mkdir(parents=True, exist_ok=True)
    payloads = dict(zip(SPLIT_FILES, (
        idx_images_bytes(data.train_images), idx_labels_bytes(data.train_labels),
        idx_images_bytes(data.test_images), idx_labels_bytes(data.test_labels))))
    for stem, payload in payloads.items():
        write(folder / (stem + (".gz" if gz else "")), payload, gz)
    return payloads


def kaggle_csv(path: Path, images: np.ndarray, labels: np.ndarray | None) -> Path:
    header = ([] if labels is None else ["label"]) + [f"pixel{i}" for i in range(784)]
    rows = images if labels is None else np.column_stack([labels, images])
    lines = [",".join(header)] + [",".join(map(str, row)) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path
