"""`mnist-xp info --check`: train a few steps on a backend and on NumPy from the same weights and
compare. This is how a user who brings an Array API library (or a new version of one) learns
whether the math runs on it: the weights must move, and must match NumPy's."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from .backends import Backend, numpy_backend
from .config import Config
from .data import Dataset
from .model import init_params
from .train import train

# Two runs that between them use every activation path, loss, optimizer and batching the
# presets use: ReLU, softmax cross-entropy, Adam with weight decay, full batch; tanh and
# sigmoid layers, MSE, momentum, shuffled mini-batches.
CONFIGS = (
    Config(hidden=(32,), activation="relu", optimizer="adam", lr=3e-3, weight_decay=1e-4,
           steps=5),
    Config(hidden=(16, 8), activation="tanh", output="sigmoid", loss="mse",
           optimizer="momentum", lr=0.5, batch_size=100, steps=5),
)
RELATIVE_TOLERANCE = {"float32": 1e-4, "float64": 1e-10}


def synthetic_digits(rows: int = 400, seed: int = 0) -> Dataset:
    """Ten noisy prototype 'digits' of MNIST's shape and dtype: nothing to download."""
    rng = np.random.default_rng(seed)
    prototypes = rng.integers(0, 256, size=(10, 784))
    labels = (np.arange(rows) % 10).astype(np.uint8)
    noise = rng.integers(-60, 61, size=(rows, 784))
    images = np.clip(prototypes[labels] + noise, 0, 255).astype(np.uint8)
    return Dataset(images, labels, images[:100], labels[:100], name="synthetic")


class Verdict(NamedTuple):
    agrees: bool
    difference: float  # largest |ours - NumPy's| over every weight, / the largest |weight|
    text: str


def compare_with_numpy(backend: Backend, dtype: str = "float32") -> Verdict:
    """Train each of CONFIGS for 5 steps on backend and on NumPy and compare the weights."""
    data = synthetic_digits()
    worst = 0.0
    for config in CONFIGS:
        config = config.replace(dtype=dtype)
        reference, _ = train(data, numpy_backend(), config, eval_every=5)
        model, _ = train(data, backend, config, eval_every=5)
        for got, want, start in zip(model.host_params(), reference.host_params(),
                                    init_params(config)):
            if got.dtype != np.dtype(dtype) or got.shape != want.shape:
                return Verdict(False, np.inf, f"differs: weights come back as {got.dtype} "
                                              f"{got.shape}, not {dtype} {want.shape}")
            if np.array_equal(got, start) and not np.array_equal(want, start):
                return Verdict(False, np.inf, "differs: the weights did not move")
            scale = max(float(np.max(np.abs(want))), 1e-30)
            worst = max(worst, float(np.max(np.abs(got.astype(np.float64) - want))) / scale)
    if not np.isfinite(worst) or worst > RELATIVE_TOLERANCE[dtype]:
        return Verdict(False, worst, f"differs by {worst:.1e} (relative to the largest weight)")
    return Verdict(True, worst, f"agrees (largest difference {worst:.1e} of the largest "
                                f"weight)")


# Library and device pairs that can work; others (NumPy on CUDA, ...) are not tried.
PAIRS = (("numpy", "cpu"), ("torch", "cpu"), ("jax", "cpu"), ("dask", "cpu"),
         ("cupy", "cuda"), ("torch", "cuda"), ("jax", "cuda"))


def check_installed() -> Iterator[tuple[str, Verdict | str]]:
    """(label, verdict) for every pair in PAIRS; a string says why a pair did not run."""
    from .backends import LibraryMissing, select_backend
    from .errors import MnistXpError

    for library, device in PAIRS:
        label = f"{library} on {device}"
        if (library, device) == ("numpy", "cpu"):
            yield label, "the reference"
            continue
        try:
            backend = select_backend(device, library)
        except LibraryMissing as exc:
            yield label, f"not installed: {str(exc).split(': ', 1)[-1]}"
            continue
        except MnistXpError as exc:
            yield label, f"unavailable: {exc}"
            continue
        if backend.device_name != device and not backend.device_name.startswith(device):
            yield label, f"unavailable: {backend.note or 'no such device'}"
            continue
        yield f"{library} on {backend.device_name}", compare_with_numpy(backend)
