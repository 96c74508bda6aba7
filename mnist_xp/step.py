"""The local engine: a whole training step on one Backend (one device). It places a split on
the device, and builds the training step and the accuracy count once per configuration:
jitted on JAX, with fused kernels on CuPy, persisted on Dask, plain elsewhere. `train` and
`bench` run the very same TrainStep; the cluster engine (mnist_xp.cluster) runs these pieces
on its workers.

    engine = LocalEngine(backend)
    split = engine.place(data, "train", dtype)               # a DeviceSplit: X, y, one-hot Y
    params, state, loss = engine.train_step(config)(params, state, split, with_loss)

is forward, backward and the optimizer's update over the rows of split.X (in chunks of
`chunk_size` rows whose gradients are summed: the same full-batch gradient). It returns new
parameters and optimizer state; the caller uses those from then on.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
from array_api_compat import array_namespace

from . import augment, nn
from .backends import Backend
from .config import Config
from .data import CLASSES, Dataset
from .distort import Distortion, distort
from .model import scale_images
from .optim import State, make_optimizer


class DeviceSplit(NamedTuple):
    """One split on the device: X (N, 784) floats in [0, 1], labels y (N,), one-hot Y (N, 10).
    A batch of it is a DeviceSplit too."""

    X: Any
    y: Any
    Y: Any

    @property
    def rows(self) -> int:
        return self.X.shape[0]

    def take(self, rows: Any) -> DeviceSplit:
        """The rows at these indices (a device array), as a DeviceSplit."""
        xp = array_namespace(self.X)
        return DeviceSplit(*(xp.take(a, rows, axis=0) for a in self))

    def distorted(self, rows: Any, how: Distortion, seed: int, epoch: int) -> DeviceSplit:
        """These rows (all of them, or a batch: `rows` their numbers in the training set)
        with their images distorted as epoch `epoch` of the run distorts them."""
        return self._replace(X=distort(self.X, rows, seed, epoch, how))


def to_device(backend: Backend, images: np.ndarray, labels: np.ndarray, dtype: str,
              chunk_rows: int | None = None, copies: int = 1, seed: int = 0) -> DeviceSplit:
    """A split on the device, computed (persisted on Dask, in chunks of chunk_rows rows), with
    `copies` shifted copies of the images (mnist_xp.augment) built on the host first."""
    images, labels = augment.copies(images, labels, copies, seed)
    X = scale_images(backend, images, dtype, chunk_rows)
    integral = backend.xp.__array_namespace_info__().default_dtypes(
        device=backend.device)["integral"]
    y = backend.asarray(labels, dtype=integral, copy=None, chunk_rows=chunk_rows)
    with backend.activate():
        Y = nn.one_hot(y, getattr(backend.xp, dtype), CLASSES)
        return DeviceSplit(*backend.ready((X, y, Y)))


def optimizer_state(backend: Backend, optimizer: Any, params: list[Any], dtype: str,
                    t: int = 0, host_state: dict[str, list[np.ndarray]] | None = None) -> State:
    """An optimizer's state on backend's device: fresh, or from a checkpoint's host arrays
    after t steps."""
    if host_state is None:
        return optimizer.init(params)
    return {"t": backend.asarray(np.asarray(t, dtype=dtype)),
            **{name: [backend.asarray(a) for a in arrays] for name, arrays in host_state.items()}}


class _Program:
    """A step's Python function, counting how often its body runs: every call where it runs
    eagerly, once per static argument and shape when jax.jit traces it."""

    def __init__(self, body: Callable[..., Any]) -> None:
        self.body, self.traces = body, 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.traces += 1
        return self.body(*args, **kwargs)


# What each backend has built, by everything the body's code depends on: a later run of the
# same configuration on the same backend reuses it, and JAX does not compile again (seconds
# per program on a small CPU). A new Backend starts with nothing built.
_BUILT: weakref.WeakKeyDictionary[Backend, dict[tuple[Any, ...], Any]] = \
    weakref.WeakKeyDictionary()


def _built(backend: Backend, key: tuple[Any, ...], body: Callable[..., Any],
           static_argnames: tuple[str, ...] = ()) -> tuple[_Program, Callable[..., Any]]:
    """body, compiled by the backend once per key."""
    built = _BUILT.setdefault(backend, {})
    if key not in built:
        program = _Program(body)
        built[key] = program, backend.compile(program, static_argnames)
    return built[key]


class TrainStep:
    """One optimizer step for `config` on `backend`."""

    def __init__(self, backend: Backend, config: Config, chunk_size: int | None = None,
                 tail: nn.Tail | None = None, total_steps: int | None = None) -> None:
        self.backend, self.config = backend, config
        self.tail = tail = tail or backend.tail
        schedule = config.schedule_for(total_steps or config.steps)
        self.optimizer = optimizer = make_optimizer(
            config.optimizer, config.lr, config.weight_decay, config.momentum, tail, schedule)
        chunk_size = None if backend.data_is_chunked else chunk_size

        def step(params: list[Any], state: State, X: Any, Y: Any, with_loss: bool
                 ) -> tuple[list[Any], State, Any]:
            loss, grads = nn.loss_and_gradients(params, X, Y, config.activation, config.output,
                                                config.loss, chunk_size, with_loss, tail)
            params, state = optimizer.update(params, grads, state)
            return params, state, loss

        key = ("step", config.activation, config.output, config.loss, config.optimizer,
               config.lr, config.momentum, config.weight_decay, chunk_size, tail, schedule)
        self._program, self._step = _built(backend, key, step, ("with_loss",))

    @property
    def traces(self) -> int:
        """How often the step's Python body ran (see _Program)."""
        return self._program.traces

    def __call__(self, params: list[Any], state: State, batch: DeviceSplit,
                 with_loss: bool = False) -> tuple[list[Any], State, Any]:
        """New parameters, optimizer state, and the loss over the batch before the update
        (None unless with_loss: reading it back costs a device round trip)."""
        return self._step(params, state, batch.X, batch.Y, with_loss=with_loss)

    def initial_state(self, params: list[Any], t: int = 0,
                      host_state: dict[str, list[np.ndarray]] | None = None) -> State:
        """The optimizer's state on the device: fresh, or from a checkpoint's host arrays
        after t steps."""
        return optimizer_state(self.backend, self.optimizer, params, self.config.dtype, t,
                               host_state)


class Accuracy:
    """accuracy(params, split): the fraction of rows predicted right, counted on the device over
    row chunks; one number comes back to the host."""

    def __init__(self, backend: Backend, activation: str, chunk_size: int | None = None) -> None:
        self.chunk_size = None if backend.data_is_chunked else chunk_size

        def hits(params: list[Any], X: Any, y: Any) -> Any:
            return nn.hit_count(nn.logits(params, X, activation), y)

        _, self._hits = _built(backend, ("hits", activation), hits)

    def hits(self, params: list[Any], split: DeviceSplit) -> float:
        """How many rows of split the network gets right."""
        X, y = split.X, split.y
        n = X.shape[0]
        step = self.chunk_size or n
        total = 0.0
        for start in range(0, n, step):
            total = total + self._hits(params, X[start:min(start + step, n), ...],
                                       y[start:min(start + step, n)])
        return float(total)

    def __call__(self, params: list[Any], split: DeviceSplit) -> float:
        return self.hits(params, split) / split.rows


class LocalEngine:
    """The local engine: data, parameters and the whole step on one Backend. The cluster
    engine (mnist_xp.cluster.ClusterEngine) has the same methods."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend  # where the parameters live, and what times a step

    name = property(lambda self: self.backend.name)
    note = property(lambda self: self.backend.note)
    library = property(lambda self: self.backend.library)
    device_name = property(lambda self: self.backend.device_name)
    on_gpu = property(lambda self: self.backend.on_gpu)
    default_chunk_rows = property(lambda self: self.backend.default_chunk_rows)

    def place(self, data: Dataset, split: str, dtype: str, chunk_rows: int | None = None, *,
              copies: int = 1, seed: int = 0) -> DeviceSplit:
        """data's "train" or "test" split on the device, with `copies` shifted copies."""
        images, labels = data.split(split)
        return to_device(self.backend, images, labels, dtype, chunk_rows, copies, seed)

    def train_step(self, config: Config, chunk_size: int | None = None,
                   tail: nn.Tail | None = None, total_steps: int | None = None) -> TrainStep:
        """The training step for config, built once per configuration on this backend, in a
        run of total_steps steps (config.steps by default: its learning-rate schedule's)."""
        return TrainStep(self.backend, config, chunk_size, tail, total_steps)

    def accuracy(self, activation: str, chunk_size: int | None = None) -> Accuracy:
        """accuracy(params, split) for networks with this activation."""
        return Accuracy(self.backend, activation, chunk_size)

    def peak_memory(self) -> contextlib.AbstractContextManager[list[int | None]]:
        """The backend's high-water mark of memory in the block (Backend.peak_memory)."""
        return self.backend.peak_memory()

    def traffic(self) -> None:
        """What crossed a network: nothing, on one device (a cluster's engine counts it)."""
        return None

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> LocalEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __str__(self) -> str:
        return self.name

