"""The training step and the accuracy count, each built once per configuration by the backend:
jitted on JAX, with fused kernels on CuPy, persisted on Dask, plain elsewhere. `train` and
`bench` run the very same TrainStep.

    split = backend.to_device(images, labels, dtype)       # a DeviceSplit: X, y, one-hot Y
    params, state, loss = step(params, state, split, with_loss)

is forward, backward and the optimizer's update over the rows of split.X (in chunks of `chunk_size`
rows whose gradients are summed: the same full-batch gradient). It returns new parameters and
optimizer state; the caller uses those from then on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
from array_api_compat import array_namespace

from . import augment, nn
from .backends import Backend
from .config import Config
from .data import CLASSES
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


class _Program:
    """A step's Python function, counting how often its body runs: every call where it runs
    eagerly, once per static argument and shape when jax.jit traces it."""

    def __init__(self, body: Callable[..., Any]) -> None:
        self.body, self.traces = body, 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.traces += 1
        return self.body(*args, **kwargs)


_BUILT: dict[tuple[Any, ...], tuple[_Program, Callable[..., Any]]] = {}


def _built(backend: Backend, key: tuple[Any, ...], body: Callable[..., Any],
           static_argnames: tuple[str, ...] = ()) -> tuple[_Program, Callable[..., Any]]:
    """body, compiled by the backend once per backend kind and key (everything the body's code
    depends on): a later run of the same configuration reuses it, and JAX does not compile
    again (seconds per program on a small CPU)."""
    key = (type(backend), *key)
    if key not in _BUILT:
        program = _Program(body)
        _BUILT[key] = program, backend.compile(program, static_argnames)
    return _BUILT[key]


class TrainStep:
    """One optimizer step for `config` on `backend`."""

    def __init__(self, backend: Backend, config: Config, chunk_size: int | None = None,
                 tail: nn.Tail | None = None) -> None:
        self.backend, self.config = backend, config
        self.tail = tail = tail or backend.tail
        self.optimizer = optimizer = make_optimizer(
            config.optimizer, config.lr, config.weight_decay, config.momentum, tail.adam_update)
        chunk_size = None if backend.data_is_chunked else chunk_size

        def step(params: list[Any], state: State, X: Any, Y: Any, with_loss: bool
                 ) -> tuple[list[Any], State, Any]:
            loss, grads = nn.loss_and_gradients(params, X, Y, config.activation, config.output,
                                                config.loss, chunk_size, with_loss, tail)
            params, state = optimizer.update(params, grads, state)
            return params, state, loss

        key = ("step", config.activation, config.output, config.loss, config.optimizer,
               config.lr, config.momentum, config.weight_decay, chunk_size, tail)
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
        state = self.optimizer.init(params)
        if host_state is not None:
            state = {"t": self.backend.asarray(np.asarray(t, dtype=self.config.dtype)),
                     **{name: [self.backend.asarray(a) for a in arrays]
                        for name, arrays in host_state.items()}}
        return state


class Accuracy:
    """accuracy(params, split): the fraction of rows predicted right, counted on the device over
    row chunks; one number comes back to the host."""

    def __init__(self, backend: Backend, activation: str, chunk_size: int | None = None) -> None:
        self.chunk_size = None if backend.data_is_chunked else chunk_size

        def hits(params: list[Any], X: Any, y: Any) -> Any:
            return nn.hit_count(nn.logits(params, X, activation), y)

        _, self._hits = _built(backend, ("hits", activation), hits)

    def __call__(self, params: list[Any], split: DeviceSplit) -> float:
        X, y = split.X, split.y
        n = X.shape[0]
        step = self.chunk_size or n
        total = 0.0
        for start in range(0, n, step):
            total = total + self._hits(params, X[start:min(start + step, n), ...],
                                       y[start:min(start + step, n)])
        return float(total) / n
