"""The picture of docs/distortions.md, and what distorting costs:

    python bench/distortions.py --data-dir DIR [--picture docs/distortions.png]

draws eight test digits as they are and as each --distort choice distorts them (epoch 0,
seed 0), then times mnist_xp.distort.distort on NumPy (and torch and JAX, where installed) for
a mini-batch of 128 images and for all 60,000: the median of 5 runs after one to warm up.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from mnist_xp.backends import select_backend
from mnist_xp.datasets import load_dataset
from mnist_xp.distort import DISTORTIONS, distort


def picture(images: np.ndarray, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    X = images[:8].reshape(8, -1).astype(np.float32) / 255
    rows = [("as they are", X)] + [(f"--distort {name}", distort(X, np.arange(8), 0, 0, how))
                                   for name, how in DISTORTIONS.items() if how is not None]
    figure, axes = plt.subplots(len(rows), 8, figsize=(8, 1.15 * len(rows)))
    for r, (title, Y) in enumerate(rows):
        for c in range(8):
            axes[r, c].imshow(Y[c].reshape(28, 28), cmap="gray_r", vmin=0, vmax=1)
            axes[r, c].axis("off")
        axes[r, 0].set_title(title, loc="left", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    print(f"wrote {path}")


def seconds(work) -> float:
    work()
    times = []
    for _ in range(5):
        begin = time.perf_counter()
        work()
        times.append(time.perf_counter() - begin)
    return statistics.median(times)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--picture")
    args = parser.parse_args()
    data = load_dataset("mnist", args.data_dir)
    if args.picture:
        picture(data.split("test")[0], args.picture)
    images = data.split("train")[0].reshape(60_000, -1).astype(np.float32) / 255
    for library in ("numpy", "torch", "jax"):
        try:
            backend = select_backend("cpu", library)
        except Exception as exc:  # not installed here
            print(f"{library}: {str(exc).splitlines()[0]}")
            continue
        for rows in (128, 60_000):
            X, numbers = backend.asarray(images[:rows]), backend.asarray(np.arange(rows))
            took = seconds(lambda b=backend, X=X, n=numbers: b.ready(
                distort(X, n, 0, 0, DISTORTIONS["both"])))
            print(f"{library}: --distort both on {rows:,} images: {took * 1e3:.1f} ms "
                  f"({took / rows * 1e6:.1f} µs an image)", flush=True)
