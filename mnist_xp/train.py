"""The training loop: full-batch (default) or shuffled mini-batch gradient descent, periodic
evaluation on the device, a divergence stop, and the history of the run.

The training and test sets cross to the device once. Inside the loop nothing crosses back but
scalar metrics at log and evaluation points (and, for mini-batches, one index permutation per
epoch going in).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from tqdm import tqdm

from . import nn
from .backend import Backend, select_backend
from .config import Config
from .data import CLASSES, Dataset
from .errors import DeviceMemoryError, DivergenceError, UsageError
from .model import MLP, scale_images
from .optim import make_optimizer
from .presets import get_preset


class DeviceSplit(NamedTuple):
    """One split on the device: X (N, 784) floats in [0, 1], labels y (N,), one-hot Y (N, 10)."""

    X: Any
    y: Any
    Y: Any


def to_device(backend: Backend, images: np.ndarray, labels: np.ndarray, dtype: str) -> DeviceSplit:
    X = scale_images(backend, images, dtype)
    y = backend.asarray(labels.astype(np.int64))
    with backend.activate():
        return DeviceSplit(X, y, nn.one_hot(y, getattr(backend.xp, dtype), CLASSES))


@dataclass
class History:
    """What a run did: one record per evaluation, plus totals."""

    records: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    final_loss: float = math.nan

    @property
    def last(self) -> dict[str, float]:
        return self.records[-1] if self.records else {}


class Evaluation(NamedTuple):
    accuracy: float
    confusion: np.ndarray  # confusion[true, predicted] counts, (10, 10)


def resolve_config(preset: str | Config, overrides: dict[str, Any]) -> Config:
    """A preset (by name or as a Config) with the given fields replaced."""
    base = get_preset(preset) if isinstance(preset, str) else preset
    return base.replace(**{k: v for k, v in overrides.items() if v is not None})


def _batches(split: DeviceSplit, config: Config, backend: Backend,
             rng: np.random.Generator) -> Iterator[DeviceSplit]:
    """Endless (X, y, Y) batches: the whole split each step, or shuffled mini-batches."""
    if config.batch_size is None:
        while True:
            yield split
    xp, n = backend.xp, split.X.shape[0]
    while True:
        order = backend.asarray(rng.permutation(n))  # one host→device copy per epoch
        for start in range(0, n, config.batch_size):
            rows = order[start:min(start + config.batch_size, n)]
            yield DeviceSplit(*(xp.take(a, rows, axis=0) for a in split))


def _device_accuracy(model: MLP, split: DeviceSplit, chunk_size: int | None) -> float:
    """Accuracy over a device split, in chunks of rows; one number comes back to the host."""
    n = split.X.shape[0]
    step = chunk_size or n
    hits = 0.0
    for start in range(0, n, step):
        rows = slice(start, min(start + step, n))
        chunk = nn.accuracy(model.logits(split.X[rows, ...]), split.y[rows])
        hits = hits + chunk * (rows.stop - rows.start)
    return float(hits) / n


def estimated_bytes(config: Config, train_rows: int, test_rows: int, chunk_rows: int) -> int:
    """Device memory a run needs, roughly: both splits as floats with one-hot labels, the
    parameters with their gradients, a chunk's gradients and the optimizer's state, and one
    chunk's activations, slopes and backward temporaries."""
    itemsize = 8 if config.dtype == "float64" else 4
    sizes = config.sizes
    data = (train_rows + test_rows) * ((sizes[0] + sizes[-1]) * itemsize + 8)
    params = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    state = {"adam": 2, "momentum": 1}.get(config.optimizer, 0)
    per_row = 2 * sum(sizes[1:-1]) + 3 * sizes[-1] + 2 * max(sizes[1:])
    return data + (3 + state) * params * itemsize + chunk_rows * per_row * itemsize


def _out_of_memory(config: Config, data: Dataset, chunk_rows: int) -> DeviceMemoryError:
    need = estimated_bytes(config, len(data.train_labels), len(data.test_labels), chunk_rows)
    smaller = max(256, 2 ** (max(chunk_rows // 4, 1).bit_length() - 1))
    return DeviceMemoryError(
        f"the device ran out of memory: this run needs about {need / 2**30:.2f} GiB with "
        f"{chunk_rows}-row chunks; use --chunk-size {smaller} (the same full-batch gradient, "
        f"in smaller pieces), a smaller --hidden, or --dtype float32")


def _finite_loss(loss: Any, step: int, lr: float) -> float:
    value = float(loss)
    if not math.isfinite(value):
        raise DivergenceError(f"the loss became {value} at step {step}: lower the learning "
                              f"rate (--lr, now {lr:g})")
    return value


def train(data: Dataset, backend: Backend | None = None, preset: str | Config = "best", *,
          eval_every: int | None = None, log_every: int = 10, chunk_size: int | None = None,
          progress: bool = False, stop_at_accuracy: float | None = None,
          **overrides: Any) -> tuple[MLP, History]:
    """Train a network on data.train_*, evaluating on data.test_* every `eval_every` steps.

    `preset` names a preset or is a Config; keyword overrides replace its fields
    (steps=, seed=, lr=, hidden=, ...). `chunk_size` splits each step's rows into chunks
    whose gradients are summed (the same gradient; default: the backend's choice).
    `stop_at_accuracy` ends the run at the first evaluation whose test accuracy reaches it.
    Each history record has `seconds` (wall time so far) and `train_seconds` (the same
    without the evaluations). Returns the trained model and its history.
    """
    config = resolve_config(preset, overrides)
    backend = backend or select_backend("auto")
    total = config.total_steps(len(data.train_labels))
    eval_every = eval_every or max(1, total // 10)
    chunk_size = chunk_size or backend.default_chunk_rows
    if eval_every < 1 or log_every < 1 or (chunk_size is not None and chunk_size < 1):
        raise UsageError("--eval-every, --log-every and --chunk-size must be at least 1")
    try:
        return _train(data, backend, config, eval_every, log_every, chunk_size, progress,
                      stop_at_accuracy)
    except backend.out_of_memory_errors:
        rows = chunk_size or config.batch_size or len(data.train_labels)
        raise _out_of_memory(config, data, rows) from None


def _train(data: Dataset, backend: Backend, config: Config, eval_every: int, log_every: int,
           chunk_size: int | None, progress: bool, stop_at_accuracy: float | None
           ) -> tuple[MLP, History]:
    total = config.total_steps(len(data.train_labels))
    history = History()
    # Divergence is caught from the loss below, so NumPy's overflow warnings would only be noise.
    with backend.activate(), np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        train_split = to_device(backend, data.train_images, data.train_labels, config.dtype)
        test_split = to_device(backend, data.test_images, data.test_labels, config.dtype)
        model = MLP.initialise(config, backend)
        tail = backend.tail
        optimizer = make_optimizer(config.optimizer, model.params, config.lr,
                                   config.weight_decay, config.momentum, tail.adam_update)
        batches = _batches(train_split, config, backend, np.random.default_rng([config.seed, 1]))
        backend.synchronize()
        start = time.perf_counter()
        evaluation_seconds = 0.0
        with tqdm(total=total, unit="step", disable=not progress, dynamic_ncols=True) as bar:
            for step in range(1, total + 1):
                batch = next(batches)
                evaluating = step % eval_every == 0 or step == total
                logging = evaluating or step % log_every == 0  # the loss is read back
                loss, grads = nn.loss_and_gradients(model.params, batch.X, batch.Y,
                                                    config.activation, config.output,
                                                    config.loss, chunk_size, logging, tail)
                optimizer.step(model.params, grads)
                if logging:
                    history.final_loss = _finite_loss(loss, step, config.lr)
                    bar.set_postfix(loss=f"{history.final_loss:.4f}", refresh=False)
                if evaluating:
                    backend.synchronize()
                    evaluation_start = time.perf_counter()
                    record = {"step": step, "loss": history.final_loss,
                              "train_accuracy": _device_accuracy(model, train_split, chunk_size),
                              "test_accuracy": _device_accuracy(model, test_split, chunk_size)}
                    now = time.perf_counter()
                    record["train_seconds"] = evaluation_start - start - evaluation_seconds
                    record["seconds"] = now - start
                    evaluation_seconds += now - evaluation_start
                    history.records.append(record)
                    bar.set_postfix(loss=f"{history.final_loss:.4f}",
                                    train=f"{history.last['train_accuracy']:.2%}",
                                    test=f"{history.last['test_accuracy']:.2%}", refresh=False)
                bar.update(1)
                history.steps = step
                if (evaluating and stop_at_accuracy is not None
                        and record["test_accuracy"] >= stop_at_accuracy):
                    break
        backend.synchronize()
        history.seconds = time.perf_counter() - start
    return model, history


def evaluate(model: MLP, images: np.ndarray, labels: np.ndarray) -> Evaluation:
    """Accuracy and the 10x10 confusion matrix (rows: true digit, columns: predicted)."""
    predicted = model.predict(images)
    truth = np.asarray(labels, dtype=np.int64)
    confusion = np.bincount(truth * CLASSES + predicted, minlength=CLASSES * CLASSES)
    return Evaluation(float(np.mean(predicted == truth)) if len(truth) else math.nan,
                      confusion.reshape(CLASSES, CLASSES))
