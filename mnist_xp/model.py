"""The MLP: its configuration and parameters on a Backend, initialisation, prediction and
save/load as a plain .npz (no pickle)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from . import nn
from .backends import Backend
from .config import Config
from .data import PIXELS
from .errors import DataError, UsageError
from .files import atomic_write

FORMAT_VERSION = 1
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
    """A dense network 784 → hidden... → 10 whose parameters live on `backend`."""

    def __init__(self, config: Config, params: list[Any], backend: Backend) -> None:
        self.config, self.params, self.backend = config, params, backend

    @classmethod
    def initialise(cls, config: Config, backend: Backend, seed: int | None = None) -> MLP:
        return cls.from_host(config, init_params(config, seed), backend)

    def logits(self, X: Any) -> Any:
        """Z_L for device inputs X already scaled to [0, 1]."""
        with self.backend.activate():
            return nn.logits(self.params, X, self.config.activation)

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities (N, 10) on the host for uint8 images (N, 784) or (N, 28, 28)."""
        chunks = []
        for start in range(0, len(images), PREDICT_CHUNK):  # host slices: NumPy clips the stop
            X = scale_images(self.backend, images[start:start + PREDICT_CHUNK], self.config.dtype)
            with self.backend.activate():
                probs = nn.output_probabilities(self.config.output, self.logits(X))
            chunks.append(self.backend.to_numpy(probs))
        return np.concatenate(chunks) if chunks else np.zeros((0, 10), self.config.dtype)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Predicted digit (N,) for uint8 images (N, 784) or (N, 28, 28)."""
        return np.argmax(self.predict_proba(images), axis=1)

    def host_params(self) -> list[np.ndarray]:
        return [self.backend.to_numpy(p) for p in self.params]

    def save(self, path: str | Path, extra: dict[str, Any] | None = None,
             arrays: dict[str, np.ndarray] | None = None) -> None:
        """Write weights and config to an .npz atomically (temp file, then os.replace); `extra`
        goes into the JSON metadata, `arrays` beside the parameters (checkpoints use both)."""
        named = {f"param{i}": p for i, p in enumerate(self.host_params())}
        meta = {"format_version": FORMAT_VERSION, "config": self.config.to_dict(), **(extra or {})}
        atomic_write(Path(path), lambda handle: np.savez(
            handle, meta=np.array(json.dumps(meta)), **named, **(arrays or {})))

    @classmethod
    def from_host(cls, config: Config, host_params: list[np.ndarray], backend: Backend) -> MLP:
        """A model on `backend` from host (NumPy) parameters, copied: training never changes
        the caller's arrays, and read-only ones work."""
        return cls(config, [backend.asarray(p) for p in host_params], backend)

    @classmethod
    def load(cls, path: str | Path, backend: Backend) -> MLP:
        """Read a model written by save(); refuses pickles, other versions and wrong shapes."""
        saved = read_model_file(Path(path))
        return cls.from_host(saved.config, saved.params, backend)


def read_npz(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The JSON metadata and the arrays of an mnist-xp .npz, refusing pickled content."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            meta = json.loads(str(archive["meta"]))
            arrays = {name: archive[name] for name in archive.files if name != "meta"}
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, not a model file") from None
    except Exception as exc:  # zipfile, pickle refusals, bad JSON: anything unreadable
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{path}: not an mnist-xp model file ({reason})") from None
    if not isinstance(meta, dict):
        raise DataError(f"{path}: not an mnist-xp model file (metadata is not an object)")
    return meta, arrays


class ModelFile(NamedTuple):
    """A checked model file: its config and parameters, and all its metadata and arrays."""

    config: Config
    params: list[np.ndarray]
    meta: dict[str, Any]
    arrays: dict[str, np.ndarray]


def read_model_file(path: Path) -> ModelFile:
    """Read and check a model (or checkpoint) file: version, config, parameter shapes, dtypes."""
    meta, arrays = read_npz(path)
    count = sum(name.startswith("param") for name in arrays)
    params = [arrays.get(f"param{i}") for i in range(count)]
    if any(p is None for p in params):
        raise DataError(f"{path}: parameters are not numbered param0..param{count - 1}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{path}: model format version {meta.get('format_version')!r} is not "
                        f"{FORMAT_VERSION}")
    try:
        config = Config.from_dict(meta["config"])
    except (KeyError, TypeError, UsageError) as exc:
        raise DataError(f"{path}: bad model config ({exc})") from None
    sizes = config.sizes
    expected = [s for a, b in zip(sizes[:-1], sizes[1:]) for s in ((a, b), (b,))]
    found = [p.shape for p in params]
    if found != expected:
        raise DataError(f"{path}: parameter shapes {found} do not match {config.describe()}")
    if any(p.dtype != np.dtype(config.dtype) for p in params):
        raise DataError(f"{path}: parameters are not all {config.dtype}")
    return ModelFile(config, params, meta, arrays)


