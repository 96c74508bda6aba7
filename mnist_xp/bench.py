"""Time full-batch training steps: the median ms per step, and the same run's median for the
step's two large matrix products alone (X·W1 and Xᵀ·dZ1), whose ratio is the cost of
everything else (activations, softmax, reductions, the optimizer and the Array API layer).

Synthetic uint8 images stand in for MNIST: dense matrix work takes the same time whatever the
pixel values, and the benchmark then needs no dataset.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from . import nn
from .backend import Backend
from .config import Config
from .data import CLASSES, PIXELS
from .model import MLP
from .optim import make_optimizer
from .train import to_device


def _timed(backend: Backend, work: Callable[[], Any]) -> float:
    """Seconds for work(), with the device synchronised before and after."""
    backend.synchronize()
    start = time.perf_counter()
    work()
    backend.synchronize()
    return time.perf_counter() - start


def time_step(backend: Backend, hidden: tuple[int, ...] = (128,), dtype: str = "float32",
              rows: int = 60_000, repeats: int = 20, warmup: int = 3, optimizer: str = "adam",
              chunk_size: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Median ms of one full-batch step (forward, backward, update) and of X·W1 + Xᵀ·dZ1.

    `chunk_size` as in train() (default: the backend's choice); the two products are timed
    whole, in one pass each. The step computes no loss value, as training steps between log
    points do not.
    """
    chunk_size = chunk_size or backend.default_chunk_rows
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(rows, PIXELS), dtype=np.uint8)
    labels = rng.integers(0, CLASSES, size=rows).astype(np.uint8)
    config = Config(hidden=hidden, activation="relu", loss="ce", optimizer=optimizer, dtype=dtype)
    with backend.activate():
        split = to_device(backend, images, labels, dtype)
        model = MLP.initialise(config, backend, seed)
        opt = make_optimizer(optimizer, model.params, config.lr)
        W1 = model.params[0]
        dZ1 = backend.asarray(rng.standard_normal((rows, W1.shape[1])).astype(dtype))
        xp = backend.xp

        def step() -> None:
            _, grads = nn.loss_and_gradients(model.params, split.X, split.Y, "relu", "softmax",
                                             "ce", chunk_size, with_loss=False)
            opt.step(model.params, grads)

        def matmuls() -> None:
            split.X @ W1
            xp.matrix_transpose(split.X) @ dZ1

        for _ in range(warmup):
            step()
            matmuls()
        step_s, matmul_s = [], []
        for _ in range(repeats):  # interleaved, so both see the same machine load
            step_s.append(_timed(backend, step))
            matmul_s.append(_timed(backend, matmuls))
    step_ms, matmul_ms = 1e3 * statistics.median(step_s), 1e3 * statistics.median(matmul_s)
    return {"backend": backend.name, "hidden": list(hidden), "dtype": dtype, "rows": rows,
            "chunk_size": chunk_size, "repeats": repeats, "step_ms": step_ms,
            "matmul_ms": matmul_ms,
            "ratio": step_ms / matmul_ms}
