"""`mnist-xp info --check`: train a few steps on a backend and on NumPy from the same weights and
compare. This is how a user who brings an Array API library (or a new version of one) learns
whether the math runs on it: the weights must move, and must match NumPy's."""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from .backends import LIBRARIES, Backend, LibraryMissing, numpy_backend, select_backend
from .config import Config
from .errors import MnistXpError, UsageError
from .model import init_params
from .synthetic import synthetic_digits
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


class Verdict(NamedTuple):
    agrees: bool
    difference: float  # largest |ours - NumPy's| over every weight, / the largest |weight|
    text: str


def compare_with_numpy(backend: Backend, dtype: str = "float32") -> Verdict:
    """Train each of CONFIGS for 5 steps on backend and on NumPy (the Array API tail: the
    reference math) and compare the weights."""
    data = synthetic_digits(400, 100)
    worst = 0.0
    for config in CONFIGS:
        config = config.replace(dtype=dtype)
        reference, _ = train(data, numpy_backend(reference=True), config, eval_every=5)
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


def check_installed() -> Iterator[tuple[str, Verdict | str]]:
    """(label, verdict) for every library on every device it can compute on
    (backends.LIBRARIES); a string says why a pair did not run."""
    for device in ("cpu", "cuda"):
        for library in (name for name, entry in LIBRARIES.items() if device in entry.devices):
            label = f"{library} on {device}"
            try:
                backend = select_backend(device, library)
            except LibraryMissing as exc:
                yield label, f"not installed: {str(exc).split(': ', 1)[-1]}"
                continue
            except MnistXpError as exc:
                yield label, f"unavailable: {exc}"
                continue
            if not backend.device_name.startswith(device):
                yield label, f"unavailable: {backend.note or 'no such device'}"
                continue
            yield f"{library} on {backend.device_name}", compare_with_numpy(backend)


WHAT = ("5 training steps of two small networks (relu/softmax/adam, full batch; "
        "tanh/sigmoid/mse/momentum, mini-batches), float32, each backend against NumPy "
        "running the Array API reference math")
# The distributions `mnist-xp info` names, then CuPy's (under one of its wheel names).
DISTRIBUTIONS = ("numpy", "array-api-compat", "tqdm", "array-api-strict", "torch", "jax",
                 "jaxlib", "dask")
CUPY_DISTRIBUTIONS = ("cupy-cuda13x", "cupy-cuda12x", "cupy")


def version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def versions() -> list[tuple[str, str]]:
    """(name, version or "not installed") of every library info names; CuPy's wheels last."""
    found = [(name, version(name)) for name in DISTRIBUTIONS]
    cupy = [d for d in CUPY_DISTRIBUTIONS if version(d) != "not installed"]
    return [*found, ("cupy", ", ".join(f"{d} {version(d)}" for d in cupy) or "not installed")]


def cuda_devices() -> list[str]:
    """A line per CUDA device CuPy sees, or one saying why it sees none (nothing without
    CuPy)."""
    if all(version(d) == "not installed" for d in CUPY_DISTRIBUTIONS):
        return []
    lines = []
    while True:
        try:
            lines.append(f"cuda:{len(lines)}: {select_backend(f'cuda:{len(lines)}', 'cupy').name}")
        except MnistXpError as exc:
            return lines or [f"no CUDA device: {exc}"]


def check(namespace: str | None = None) -> Iterator[tuple[str, Verdict | str]]:
    """(label, verdict) for the namespace named (a module: array_api_strict, ...), or for every
    installed library (check_installed)."""
    if not namespace:
        yield from check_installed()
        return
    try:
        xp = importlib.import_module(namespace)
    except ImportError as exc:
        raise UsageError(f"--namespace {namespace}: cannot import it ({exc})") from None
    backend = Backend(xp)
    yield backend.name, compare_with_numpy(backend)
