"""What runs on a cluster's workers: a chunk of rows built from its recipe and kept, its share
of a batch's loss and gradient, its hits. Each reuses the local engine's pieces (step.py) on
the worker's own backend: NumPy on a CPU worker, CuPy on a GPU worker under dask-cuda.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import numpy as np
from distributed.diagnostics.plugin import WorkerPlugin

from .. import augment, nn
from ..backends import Backend, numpy_backend, select_backend
from ..distort import Distortion
from ..step import Accuracy, DeviceSplit, to_device


class Recipe(NamedTuple):
    """How a worker builds one chunk: rows start..stop of copy `copy` of a split, read from the
    dataset's files in `folder`, or from `images`/`labels` shipped with the recipe."""

    start: int
    stop: int
    copy: int
    seed: int
    dtype: str
    gpu: bool
    dataset: str | None = None
    folder: str | None = None
    split: str = "train"
    images: np.ndarray | None = None  # the split's rows start..stop, when not read from files
    labels: np.ndarray | None = None
    base_rows: int = 0  # rows in the whole split (the augmentation's shifts are drawn for all)


class Settings(NamedTuple):
    """What a chunk's gradient depends on besides the parameters and the chunk."""

    activation: str
    output: str
    loss: str
    inner_chunk: int | None  # rows per pass on the worker (cache-sized on a CPU)


@functools.lru_cache(maxsize=2)
def worker_backend(gpu: bool) -> Backend:
    """This worker process's backend: CuPy on the GPU dask-cuda gave it, else NumPy."""
    return select_backend("cuda", "cupy") if gpu else numpy_backend()


@functools.lru_cache(maxsize=2)
def _read_split(dataset: str, folder: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A split read on a worker, once per worker process (the files' folder must be reachable
    from it, e.g. shared)."""
    from ..datasets import load_dataset

    return load_dataset(dataset, folder, test_only=split == "test").split(split)


def build_chunk(recipe: Recipe) -> DeviceSplit:
    """The chunk's rows, shifted (copy > 0), on the worker's device (step.to_device)."""
    if recipe.images is None:
        images, labels = _read_split(recipe.dataset, recipe.folder, recipe.split)
        base_rows = len(images)
        images, labels = images[recipe.start:recipe.stop], labels[recipe.start:recipe.stop]
    else:
        images, labels, base_rows = recipe.images, recipe.labels, recipe.base_rows
    if recipe.copy:
        moves = augment.shifts(base_rows, recipe.copy, recipe.seed)[recipe.start:recipe.stop]
        images = augment.shifted(images, moves)
    return to_device(worker_backend(recipe.gpu), images, labels, recipe.dtype)


def chunk_rows_of(chunk: DeviceSplit) -> int:
    return chunk.rows


def _on_worker(chunk: DeviceSplit, params: tuple[np.ndarray, ...]
               ) -> tuple[Backend, list[Any]]:
    backend = worker_backend(not isinstance(chunk.X, np.ndarray))
    return backend, [backend.asarray(p) for p in params]


def chunk_gradient(params: tuple[np.ndarray, ...], chunk: DeviceSplit, settings: Settings,
                   batch_rows: int, with_loss: bool, rows: np.ndarray | None, start: int = 0,
                   distortion: tuple[Distortion, int, int] | None = None
                   ) -> tuple[float | None, list[np.ndarray]]:
    """This chunk's share of a batch of batch_rows rows: its mean loss and gradient over its
    rows (or the `rows` of it the batch takes), weighted by its share of the batch, so that
    the shares sum to the batch's mean. The chunk starts at row `start` of the training set,
    which (with the seed and epoch) decides each image's distortion."""
    backend, device_params = _on_worker(chunk, params)
    picked = None if rows is None else backend.asarray(rows)
    if picked is not None:
        chunk = chunk.take(picked)
    if distortion is not None:  # the rows' numbers, made on the worker's device
        local = backend.xp.arange(chunk.rows, device=backend.device) if picked is None else picked
        chunk = chunk.distorted(local + start, *distortion)
    loss, grads = nn.loss_and_gradients(device_params, chunk.X, chunk.Y, settings.activation,
                                        settings.output, settings.loss, settings.inner_chunk,
                                        with_loss)
    share = chunk.rows / batch_rows
    return ((float(loss) * share if with_loss else None),
            [backend.to_numpy(g) * np.asarray(share, g.dtype) for g in grads])


def add_up(*parts: tuple[float | None, list[np.ndarray]]
           ) -> tuple[float | None, list[np.ndarray]]:
    """The sum of partial losses and gradients."""
    losses = [loss for loss, _ in parts]
    loss = None if losses[0] is None else float(sum(losses))
    return loss, [functools.reduce(np.add, grads) for grads in zip(*(g for _, g in parts))]


def worker_gradient(params: tuple[np.ndarray, ...], settings: Settings, batch_rows: int,
                    with_loss: bool, parts: list[tuple[np.ndarray | None, int]],
                    distortion: tuple[Distortion, int, int] | None, *chunks: DeviceSplit
                    ) -> tuple[float | None, list[np.ndarray]]:
    """The sum of this worker's chunks' shares of the batch's loss and gradient, so that one
    partial sum per worker comes back (and one task per worker keeps the scheduling to one
    hop a step). parts: each chunk's rows in the batch (None: all) and first row's number."""
    return add_up(*(chunk_gradient(params, chunk, settings, batch_rows, with_loss, rows, start,
                                   distortion)
                    for chunk, (rows, start) in zip(chunks, parts)))


def worker_hits(params: tuple[np.ndarray, ...], activation: str, *chunks: DeviceSplit
                ) -> float:
    """How many of this worker's chunks' rows the network gets right (step.Accuracy)."""
    total = 0.0
    for chunk in chunks:
        backend, device_params = _on_worker(chunk, params)
        total += Accuracy(backend, activation).hits(device_params, chunk)
    return total


class OwnProcessGroup(WorkerPlugin):
    """Moves each worker process of a LocalCluster started here into a process group of its
    own, so that a signal sent to this command's group (Ctrl-C in a terminal, `timeout`)
    reaches only the command, which stops after its step and writes its checkpoint; the
    workers are closed after that, by their nannies. Restarted workers get it too."""

    name = "mnist-xp-own-process-group"

    def setup(self, worker: Any) -> None:
        import os

        os.setpgid(0, 0)
