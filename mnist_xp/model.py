"""The MLP: its configuration and parameters on a Backend, initialisation, prediction and
save/load as a plain .npz (no pickle; modelfile.py reads it back)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from . import nn
from .backends import Backend
from .config import Config
from .data import PIXELS
from .errors import DivergenceError, UsageError
from .files import atomic_write
from .modelfile import FORMAT_VERSION, INPUT, read_model_file

PREDICT_CHUNK = 10_000


def init_params(config: Config, seed: int | None = None) -> list[np.ndarray]:
    """Host weights from numpy.random.default_rng(seed), cast on the host to config.dtype.

    W_l ~ N(0, 2/fan_in) (He) for layers followed by relu, N(0, 2/(fan_in + fan_out))
    (Xavier) otherwise; b_l = 0. The same seed gives the same weights on every backend.
    """
    rng = np.random.default_rng(config.seed if seed is None else seed)
    sizes = config.sizes
    params = []
    for layer, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        hidden = layer < len(sizes) - 2
        he = hidden and config.activation == "relu"
        std = np.sqrt(2.0 / fan_in) if he else np.sqrt(2.0 / (fan_in + fan_out))
        params.append((rng.standard_normal((fan_in, fan_out)) * std).astype(config.dtype))
        params.append(np.zeros(fan_out, dtype=config.dtype))
    return params


def as_pixels(images: Any) -> tuple[np.ndarray, bool]:
    """Images as a (N, 784) host array of uint8 0..255 or floats in [0, 1], and whether a
    single image was given: (784,) and (28, 28) are one image, (N, 784) and (N, 28, 28) many.
    Anything else is refused, rather than scored wrongly (floats in 0..255, say)."""
    array = np.asarray(images)
    single = array.shape in ((PIXELS,), (28, 28))
    if single or (array.ndim == 3 and array.shape[1:] == (28, 28)):
        array = array.reshape(-1, PIXELS)
    if array.ndim != 2 or array.shape[1] != PIXELS:
        raise UsageError(f"images must be shaped (784,) or (28, 28) for one, (N, 784) or "
                         f"(N, 28, 28) for many; got {array.shape}")
    if array.dtype == np.uint8:
        return array, single
    if array.dtype.kind in "iu":  # integer pixels 0..255, e.g. int64 from a computation
        if array.size and not (array.min() >= 0 and array.max() <= 255):
            raise UsageError(f"integer images must lie in 0..255; got values from "
                             f"{array.min()} to {array.max()}")
        return array.astype(np.uint8), single
    if array.dtype.kind != "f":
        raise UsageError(f"images must be uint8 0..255 or floats in [0, 1]; got {array.dtype}")
    finite = array[np.isfinite(array)]
    if finite.size < array.size or (array.size and not (finite.min() >= 0 and
                                                        finite.max() <= 1)):
        seen = f"values from {finite.min():g} to {finite.max():g}" if finite.size else "no values"
        odd = " and NaN or infinity" if finite.size < array.size else ""
        raise UsageError(f"float images must lie in [0, 1] (uint8 pixels divided by 255); got "
                         f"{seen}{odd}")
    return array, single


def scale_images(backend: Backend, images: np.ndarray, dtype: str,
                 chunk_rows: int | None = None) -> Any:
    """uint8 host images (N, 784) -> device floats in [0, 1]: moved as uint8, cast, then /255
    in place where the library allows (X is this function's own), so that only one float copy
    exists at a time (188 MB for MNIST in float32)."""
    xp = backend.xp
    host = np.ascontiguousarray(images).reshape(len(images), PIXELS)
    device_images = backend.asarray(host, copy=None, chunk_rows=chunk_rows)
    with backend.activate():
        X = xp.astype(device_images, getattr(xp, dtype))
        X /= 255.0
        return X


class MLP:
    """A dense network 784 → hidden... → 10 whose parameters live on `backend`; `dataset`
    names what it was trained on (None where unknown)."""

    def __init__(self, config: Config, params: list[Any], backend: Backend,
                 dataset: str | None = None) -> None:
        self.config, self.params, self.backend = config, params, backend
        self.dataset = dataset

    @classmethod
    def initialise(cls, config: Config, backend: Backend, seed: int | None = None) -> MLP:
        return cls.from_host(config, init_params(config, seed), backend)

    def logits(self, X: Any) -> Any:
        """Z_L for device inputs X already scaled to [0, 1]."""
        with self.backend.activate():
            return nn.logits(self.params, X, self.config.activation)

    def _device_inputs(self, pixels: np.ndarray) -> Any:
        if pixels.dtype == np.uint8:
            return scale_images(self.backend, pixels, self.config.dtype)
        return self.backend.asarray(pixels.astype(self.config.dtype, copy=False))

    def predict_proba(self, images: Any) -> np.ndarray:
        """Class probabilities on the host: (N, 10) for many images, (10,) for one. Images are
        uint8 0..255 or floats in [0, 1], shaped as as_pixels() describes."""
        pixels, single = as_pixels(images)
        chunks = []
        for start in range(0, len(pixels), PREDICT_CHUNK):  # host slices: NumPy clips the stop
            X = self._device_inputs(pixels[start:start + PREDICT_CHUNK])
            with self.backend.activate():
                probs = nn.output_probabilities(self.config.output, self.logits(X))
            chunks.append(self.backend.to_numpy(probs))
        probabilities = (np.concatenate(chunks) if chunks
                         else np.zeros((0, 10), self.config.dtype))
        return probabilities[0] if single else probabilities

    def predict(self, images: Any) -> np.ndarray | int:
        """The predicted class: (N,) for many images, an int for one."""
        probabilities = self.predict_proba(images)
        if probabilities.ndim == 1:
            return int(np.argmax(probabilities))
        return np.argmax(probabilities, axis=1)

    def host_params(self) -> list[np.ndarray]:
        return [self.backend.to_numpy(p) for p in self.params]

    def npz_writer(self, extra: dict[str, Any] | None = None,
                   arrays: dict[str, np.ndarray] | None = None) -> Callable[[BinaryIO], None]:
        """A function that writes this model's .npz to a binary handle: weights, config, the
        dataset and the input it expects; `extra` goes into the JSON metadata, `arrays` beside
        the parameters (checkpoints use both). The weights are copied to the host now."""
        named = {f"param{i}": p for i, p in enumerate(self.host_params())}
        non_finite = [name for name, a in {**named, **(arrays or {})}.items()
                      if not np.isfinite(a).all()]
        if non_finite:  # a diverged run's weights are never written (nor over a good file)
            raise DivergenceError(f"{', '.join(non_finite)} hold NaN or infinity, so nothing "
                                  f"was written")
        meta = {"format_version": FORMAT_VERSION, "config": self.config.to_dict(),
                "dataset": self.dataset, "input": INPUT, **(extra or {})}
        text = json.dumps(meta, allow_nan=False)  # the metadata is finite: checked on read
        return lambda handle: np.savez(handle, meta=np.array(text), **named,
                                       **(arrays or {}))

    def save(self, path: str | Path, extra: dict[str, Any] | None = None,
             arrays: dict[str, np.ndarray] | None = None) -> None:
        """Write the model's .npz atomically (a temp file, then os.replace); see npz_writer."""
        atomic_write(Path(path), self.npz_writer(extra, arrays))

    @classmethod
    def from_host(cls, config: Config, host_params: list[np.ndarray], backend: Backend,
                  dataset: str | None = None) -> MLP:
        """A model on `backend` from host (NumPy) parameters, copied: training never changes
        the caller's arrays, and read-only ones work."""
        return cls(config, [backend.asarray(p) for p in host_params], backend, dataset)

    @classmethod
    def load(cls, path: str | Path, backend: Backend) -> MLP:
        """Read a model written by save(); refuses pickles, other versions and wrong shapes."""
        saved = read_model_file(Path(path))
        return cls.from_host(saved.config, saved.params, backend, saved.dataset)
