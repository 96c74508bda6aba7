"""Small synthetic MNIST-format files for the tests (the digits and their IDX files come from
mnist_xp.synthetic): nothing here touches the network."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from mnist_xp.synthetic import idx_images_bytes, idx_labels_bytes
from mnist_xp.synthetic import synthetic_digits as synthetic_dataset
from mnist_xp.synthetic import write_idx_folder as write_dataset

__all__ = ["idx_images_bytes", "idx_labels_bytes", "kaggle_csv", "synthetic_dataset", "write",
           "write_dataset"]


def write(path: Path, payload: bytes, gz: bool = True) -> Path:
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


def kaggle_csv(path: Path, images: np.ndarray, labels: np.ndarray | None) -> Path:
    header = ([] if labels is None else ["label"]) + [f"pixel{i}" for i in range(784)]
    rows = images if labels is None else np.column_stack([labels, images])
    lines = [",".join(header)] + [",".join(map(str, row)) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path
