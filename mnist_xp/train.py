"""The training loop: full-batch (default) or shuffled mini-batch gradient descent, periodic
evaluation on the device, a divergence stop, and the history of the run.

The training and test sets cross to the device once. Inside the loop nothing crosses back but
scalar metrics at log and evaluation points (and, for mini-batches, one index permutation per
epoch going in).
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from tqdm import tqdm

from .backends import Backend, select_backend
from .checkpoint import Checkpoint, save_checkpoint
from .config import Config
from .data import CLASSES, Dataset
from .distort import DISTORTIONS
from .engines import Engine, as_engine
from .errors import (
    DataError,
    DeviceMemoryError,
    DivergenceError,
    Interrupted,
    LostWork,
    MnistXpError,
)
from .model import MLP
from .pace import Estimate, Pace
from .settings import RunSettings, check_run
from .version import __version__


@dataclass
class History:
    """What a run did: one record per evaluation, plus totals. `steps` and `seconds` count from
    the run's start, resumed parts included; `first_step` is where this process began (1, or
    the step after a checkpoint's), so steps - first_step + 1 ran here, in `seconds_here`."""

    records: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    final_loss: float = math.nan
    first_step: int = 1
    seconds_here: float = 0.0
    checkpoint_kept: str | None = None  # where the last checkpoint went when its path failed

    @property
    def steps_here(self) -> int:
        return self.steps - self.first_step + 1

    @property
    def last(self) -> dict[str, float]:
        return self.records[-1] if self.records else {}

    @property
    def rate(self) -> float:
        """Steps per second in this process."""
        return self.steps_here / self.seconds_here if self.seconds_here > 0 else math.inf

    def summary(self) -> str:
        """The line a finished run ends with."""
        here = "" if self.first_step == 1 else f", {self.steps_here} of them in this run,"
        return (f"done: {self.steps} steps{here} in {self.seconds_here:.1f} s ({self.rate:.1f} "
                f"steps/s); train accuracy {self.last['train_accuracy']:.2%}, test accuracy "
                f"{self.last['test_accuracy']:.2%}, final loss {self.final_loss:.4f}")


class Evaluation(NamedTuple):
    accuracy: float
    confusion: np.ndarray  # confusion[true, predicted] counts, (10, 10)

    def table(self) -> str:
        """The matrix with a header row; rows are true digits, columns predictions."""
        confusion = self.confusion
        width = max(5, len(str(int(confusion.max()))) + 1)
        lines = ["true\\pred" + "".join(f"{k:>{width}}" for k in range(confusion.shape[1]))]
        lines += [f"{k:>9}" + "".join(f"{v:>{width}}" for v in row)
                  for k, row in enumerate(confusion)]
        return "\n".join(lines)


class Batches:
    """Endless batches: the whole split each step, or shuffled mini-batches, one permutation
    per epoch from default_rng([seed, 1]). state() is the RNG's state at the start of the
    current epoch and the position in it, which is all a checkpoint needs to continue. With
    config.distort, each batch's images are distorted afresh: as its epoch (each step, in
    full batch), counted from the step, distorts them (mnist_xp.distort); the next batch is
    made on a thread of its own while the step runs (the step leaves a core idle in its
    element-wise parts), so state() is that of the batch last handed out. close() after."""

    def __init__(self, split: Any, config: Config, backend: Backend,
                 state: dict[str, Any] | None = None, first_step: int = 1) -> None:
        self.split, self.backend, self.size = split, backend, config.batch_size
        self.rng = np.random.default_rng([config.seed, 1])
        self.position, self.order = 0, None
        if state and self.size is not None:
            self.rng.bit_generator.state = state["rng"]
            self.position = int(state["position"])
        self.epoch_state = self.rng.bit_generator.state
        if self.position > 0:  # the epoch's permutation, drawn again from its starting state
            self.order = backend.asarray(self.rng.permutation(split.rows))
        self.distortion, self.seed = DISTORTIONS[config.distort], config.seed
        self.step = first_step - 1  # the step the last batch was for
        self.per_epoch = 1 if self.size is None else math.ceil(split.rows / self.size)
        self.all_rows: Any = None
        self._handed = self._state()
        self._ahead: Future | None = None
        self._maker = ThreadPoolExecutor(1) if self.distortion is not None else None

    def _state(self) -> dict[str, Any]:
        return {"rng": self.epoch_state, "position": self.position}

    def state(self) -> dict[str, Any]:
        """Where the batch last handed out leaves the sequence (for a checkpoint)."""
        return self._handed

    def __next__(self) -> Any:
        if self._maker is None:
            batch, self._handed = self._make()
            return batch
        if self._ahead is None:
            self._ahead = self._maker.submit(self._make)
        batch, self._handed = self._ahead.result()
        self._ahead = self._maker.submit(self._make)
        return batch

    def close(self) -> None:
        if self._maker is not None:
            self._maker.shutdown(wait=False, cancel_futures=True)

    def _make(self) -> tuple[Any, dict[str, Any]]:
        """The next batch, and the state after it."""
        return self._next(), self._state()

    def _next(self) -> Any:
        self.step += 1
        n = self.split.rows
        if self.size is None:
            if self.distortion is None:
                return self.split
            if self.all_rows is None:
                self.all_rows = self.backend.asarray(np.arange(n))
            return self.split.distorted(self.all_rows, self.distortion, self.seed,
                                        self.step - 1)
        if self.position >= n:
            self.position, self.order = 0, None
            self.epoch_state = self.rng.bit_generator.state
        if self.order is None:  # one host→device copy per epoch
            self.order = self.backend.asarray(self.rng.permutation(n))
        rows = self.order[self.position:min(self.position + self.size, n)]
        self.position += self.size
        batch = self.split.take(rows)
        if self.distortion is None:
            return batch
        return batch.distorted(rows, self.distortion, self.seed,
                               (self.step - 1) // self.per_epoch)


def estimated_bytes(config: Config, train_rows: int, test_rows: int, chunk_rows: int) -> int:
    """Device memory a run needs, roughly: both splits (the training set's augmented copies
    too) as floats with one-hot labels; the
    parameters, their gradients, a chunk's gradients and the updated parameters, with the
    optimizer's state twice (the update makes the new state beside the old); and one chunk's
    activations, slopes and backward temporaries."""
    itemsize = 8 if config.dtype == "float64" else 4
    sizes = config.sizes
    data = (train_rows * config.augment + test_rows) * ((sizes[0] + sizes[-1]) * itemsize + 8)
    params = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    state = {"adam": 2, "momentum": 1, "nesterov": 1}.get(config.optimizer, 0)
    per_row = 2 * sum(sizes[1:-1]) + 3 * sizes[-1] + 2 * max(sizes[1:])
    return data + (4 + 2 * state) * params * itemsize + chunk_rows * per_row * itemsize


def check_fits(config: Config, data: Dataset, engine: Engine, chunk_rows: int) -> None:
    """Refuse, before anything is built, a run whose data and step cannot fit the memory its
    device has left (with --augment K the training set is there K times, and built as uint8
    on the host first): one line with both figures. A cluster spreads the copies over its
    workers, and a device that does not say what it has left is not checked."""
    available = engine.backend.memory_available() if engine.traffic() is None else None
    if available is None:
        return
    need = estimated_bytes(config, len(data.train_labels), len(data.test_labels), chunk_rows)
    if config.augment > 1:
        need += len(data.train_labels) * config.augment * data.train_images.shape[1]
    if need > available:
        copies = (f" ({config.augment} copies of the training set)" if config.augment > 1
                  else "")
        raise DeviceMemoryError(
            f"this run needs about {need / 2**30:.1f} GiB{copies}, and "
            f"{engine.device_name} has {available / 2**30:.1f} GiB left: use fewer copies "
            f"(--augment), a smaller --hidden or --chunk-size, or a cluster (--workers N or "
            f"--scheduler ADDRESS), which spreads the copies over its workers")


def _out_of_memory(config: Config, data: Dataset, chunk_rows: int) -> DeviceMemoryError:
    need = estimated_bytes(config, len(data.train_labels), len(data.test_labels), chunk_rows)
    smaller = max(256, 2 ** (max(chunk_rows // 4, 1).bit_length() - 1))
    return DeviceMemoryError(
        f"the device ran out of memory: this run needs about {need / 2**30:.2f} GiB with "
        f"{chunk_rows}-row chunks; use --chunk-size {smaller} (the same full-batch gradient, "
        f"in smaller pieces), a smaller --hidden, or --dtype float32")


DIVERGED = 1e3  # a loss this many times the loss the run started from: it has diverged


def _checked_loss(loss: Any, start: float, step: int, lr: float, saved: str) -> float:
    """The loss read back at `step`, or DivergenceError when it is NaN or infinite, or has
    grown DIVERGED times beyond `start`, the loss of the network this run started from (a
    mini-batch's loss may swing far below it, never that far above); `saved` says what holds
    the last step written."""
    value = float(loss)
    if math.isfinite(value) and not value > DIVERGED * start:
        return value
    grown = (f", {value / start:.3g} times the {start:.4g} it started from"
             if math.isfinite(value) else "")
    raise DivergenceError(f"the loss became {value:g} at step {step}{grown}: the run diverged; "
                          f"lower the learning rate (--lr, now {lr:g}); {saved}")


def train(data: Dataset, backend: Backend | Engine | None = None,
          preset: str | Config | None = None, *, settings: RunSettings | None = None,
          eval_every: int | None = None, log_every: int = 10, chunk_size: int | None = None,
          checkpoint: Path | None = None, checkpoint_every: int | None = None,
          resume: Checkpoint | None = None, progress: bool = False,
          stop_at_accuracy: float | None = None, should_stop: Callable[[], Any] | None = None,
          on_pace: Callable[[Estimate], None] | None = None,
          **overrides: Any) -> tuple[MLP, History]:
    """Train a network on data.train_*, evaluating on data.test_* every `eval_every` steps.

    `backend` is a Backend (the local engine runs on it) or an engine (mnist_xp.engines;
    default: select_backend("auto")). The run's settings are checked once, by
    settings.check_run: either `settings` as the command line checked them, or these
    arguments. `preset` names a preset or is a Config (default: best; with `resume`, the
    checkpoint's); keyword overrides replace its fields (steps=, seed=, lr=, hidden=, ...).
    `chunk_size` splits each step's rows into chunks whose gradients are summed (the same
    gradient; default: the engine's choice). `checkpoint` is written every
    `checkpoint_every` steps and at the end; `resume` (from load_checkpoint) continues a run.

    `stop_at_accuracy` ends the run at the first evaluation whose test accuracy reaches it.
    `should_stop()` is asked once when the run is set up (before its first step) and after
    every step: when true (a string names why, e.g. "Ctrl-C"), the checkpoint (if any) is
    written and Interrupted raised, so a stop never leaves a half-applied update behind.
    `on_pace(estimate)` (pace.Estimate) is called once, early: after the few steps after
    this run's first (which pays one-off costs such as compiling) whose median is the time
    per step, with one evaluation timed; and once more, refreshed, if the run proves it far
    off. Each history record has `seconds` (wall time
    so far) and `train_seconds` (the same without the evaluations). Returns the trained model
    and its history.
    """
    if settings is None:
        given = {name: value for name, value in overrides.items() if value is not None}
        settings = check_run(preset, given, train_rows=lambda _: len(data.train_labels),
                             resume=resume, dataset=data.name, eval_every=eval_every,
                             log_every=log_every, chunk_size=chunk_size, checkpoint=checkpoint,
                             checkpoint_every=checkpoint_every)
    engine = as_engine(backend or select_backend("auto"))
    engine.backend.check_dtype(settings.config.dtype)
    chunk_size = engine.default_chunk_rows if settings.chunk_size is None else settings.chunk_size
    check_fits(settings.config, data, engine,
               chunk_size or settings.config.batch_size or len(data.train_labels))
    try:
        return _train(data, engine, settings, chunk_size, progress, stop_at_accuracy,
                      should_stop, on_pace)
    except Exception as exc:
        if not engine.backend.is_out_of_memory(exc):
            raise
        rows = chunk_size or settings.config.batch_size or len(data.train_labels)
        raise _out_of_memory(settings.config, data, rows) from None


def _train(data: Dataset, engine: Engine, settings: RunSettings, chunk_size: int | None,
           progress: bool, stop_at_accuracy: float | None,
           should_stop: Callable[[], Any] | None, on_pace: Callable[[Estimate], None] | None
           ) -> tuple[MLP, History]:
    config, resume, total = settings.config, settings.resume, settings.total_steps
    eval_every, log_every = settings.eval_every, settings.log_every
    backend = engine.backend
    history = History()
    # Divergence is caught from the loss below, so NumPy's overflow warnings would only be noise.
    with backend.activate(), np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        train_split = engine.place(data, "train", config.dtype, chunk_size,
                                   copies=config.augment, seed=config.seed)
        test_split = engine.place(data, "test", config.dtype, chunk_size)
        model = (MLP.initialise(config, backend) if resume is None else
                 MLP.from_host(config, resume.params, backend))
        model.dataset = data.name
        train_step = engine.train_step(config, chunk_size, total_steps=total)
        accuracy = engine.accuracy(config.activation, chunk_size)
        first = settings.first_step
        if resume is None:
            state = train_step.initial_state(model.params)
        else:
            state = train_step.initial_state(model.params, resume.optimizer_t,
                                             resume.optimizer_state)
            history.records, history.final_loss = list(resume.records), resume.final_loss
        batches = Batches(train_split, config, backend, resume.batches if resume else None,
                          first)

        start_loss = math.inf  # the first loss read back in this process (at its first step)
        last_saved = (f"--checkpoint {settings.checkpoint} was not written in this run"
                      if settings.checkpoint else "nothing was saved (--checkpoint FILE.npz "
                                                  "keeps the last good step)")

        def save(step: int, batches_state: dict[str, Any] | None = None) -> Path | None:
            """The checkpoint after `step`; where its path cannot be written, a copy in the
            temporary folder and a warning (the run goes on, and tries the path again next
            time); a run whose checkpoint can be written nowhere stops."""
            path = settings.checkpoint
            if path is None:
                return None
            nonlocal last_saved
            try:
                kept = save_checkpoint(path, model, state, step,
                                       batches_state or batches.state(), history.records,
                                       history.final_loss)
            except DivergenceError as exc:
                raise DivergenceError(f"the weights after step {step} {exc}: the run "
                                      f"diverged; lower the learning rate (--lr, now "
                                      f"{config.lr:g}); {last_saved}") from None
            except OSError as exc:
                raise DataError(f"--checkpoint {path}: {exc.strerror or exc}, and the "
                                f"checkpoint of step {step} could not be kept anywhere") from None
            if kept is not None:
                warnings.warn(f"--checkpoint {path} could not be written; the checkpoint "
                              f"of step {step} was kept at {kept} (--resume it)", stacklevel=2)
            last_saved = f"{kept or path} holds step {step}, the last checkpoint written"
            history.checkpoint_kept = (None if kept is None else
                                       f"--checkpoint {path} could not be written; the "
                                       f"checkpoint of step {step} is kept at {kept} "
                                       f"(--resume it)")
            return kept or path

        def asked_to_stop() -> Any:
            return should_stop() if should_stop is not None else None

        def stopped(reason: Any, step: int, saved: Path | None) -> Interrupted:
            by = f" by {reason}" if isinstance(reason, str) else ""
            where = (f"checkpoint saved to {saved}" if saved else
                     "nothing was saved (--checkpoint FILE.npz keeps a stopped run)")
            return Interrupted(f"stopped{by} after step {step} of {total}: {where}")

        model.params, state = backend.ready((model.params, state))
        if asked_to_stop():  # asked once now, set up: a stop from here on waits for its step
            raise stopped(asked_to_stop(), first - 1, None)
        already = history.last.get("seconds", 0.0)
        here = time.perf_counter()
        start = here - already
        evaluation_seconds = already - history.last.get("train_seconds", 0.0)
        history.steps, history.first_step = first - 1, first
        pace = Pace(first, total, eval_every)
        evaluation_time: float | None = None  # what the last evaluation took

        def time_an_evaluation() -> float:
            """One evaluation's time, for the pace before the run has made one."""
            backend.ready(model.params)
            begin = time.perf_counter()
            accuracy(model.params, train_split), accuracy(model.params, test_split)
            return time.perf_counter() - begin
        with tqdm(total=total, initial=first - 1, unit="step", disable=not progress,
                  dynamic_ncols=True) as bar, contextlib.closing(batches):
            done, done_batches = first - 1, batches.state()  # what model.params hold
            for step in range(first, total + 1):
                batch = next(batches)
                evaluating = step % eval_every == 0 or step == total
                # the loss is read back: every log_every steps, at evaluations, and at the first
                # step, whose loss is what divergence is measured against
                logging = evaluating or step % log_every == 0 or step == first
                step_start = time.perf_counter()
                try:
                    model.params, state, loss = train_step(model.params, state, batch,
                                                           with_loss=logging)
                    done, done_batches = step, batches.state()
                    if on_pace is not None and pace.times_step(step):
                        backend.ready(model.params)
                        seconds = time.perf_counter() - step_start
                        if step == pace.last_timed and evaluation_time is None:
                            evaluation_time = time_an_evaluation()
                            evaluation_seconds += evaluation_time  # not training time
                        estimate = pace.timed(step, seconds, evaluation_time or 0.0,
                                              time.perf_counter())
                        if estimate is not None:
                            on_pace(estimate)
                    if logging:
                        history.final_loss = _checked_loss(loss, start_loss, step, config.lr,
                                                           last_saved)
                        if start_loss == math.inf:
                            start_loss = history.final_loss
                        bar.set_postfix(loss=f"{history.final_loss:.4f}", refresh=False)
                    if evaluating:
                        backend.ready(model.params)
                        evaluation_start = time.perf_counter()
                        record = {"step": step, "loss": history.final_loss,
                                  "train_accuracy": accuracy(model.params, train_split),
                                  "test_accuracy": accuracy(model.params, test_split)}
                        now = time.perf_counter()
                        record["train_seconds"] = evaluation_start - start - evaluation_seconds
                        record["seconds"] = now - start
                        evaluation_time = now - evaluation_start
                        evaluation_seconds += evaluation_time
                        refreshed = pace.check(step, now) if on_pace is not None else None
                        if refreshed is not None:
                            on_pace(refreshed)
                        history.records.append(record)
                        bar.set_postfix(loss=f"{history.final_loss:.4f}",
                                        train=f"{history.last['train_accuracy']:.2%}",
                                        test=f"{history.last['test_accuracy']:.2%}", refresh=False)
                except MnistXpError as exc:
                    reason = asked_to_stop()
                    if reason:  # a stop signal that also reached the engine's workers
                        raise stopped(reason, done, save(done, done_batches)) from None
                    if not isinstance(exc, LostWork):
                        raise
                    saved = save(done, done_batches)  # the last step the engine finished
                    where = (f"the checkpoint of step {done} was saved to {saved}: resume "
                             f"from its last checkpoint with --resume {saved}" if saved else
                             "nothing was saved (--checkpoint FILE.npz keeps the last step)")
                    raise type(exc)(f"{exc}; the run stopped at step {step} of {total}; "
                                    f"{where}") from None
                bar.update(1)
                history.steps = step
                if step % settings.checkpoint_every == 0 or step == total:
                    save(step)
                reason = asked_to_stop()
                if reason:
                    raise stopped(reason, step, save(step))
                if (evaluating and stop_at_accuracy is not None
                        and record["test_accuracy"] >= stop_at_accuracy):
                    save(step)
                    break
        backend.ready(model.params)
        history.seconds = time.perf_counter() - start
        history.seconds_here = time.perf_counter() - here
    return model, history


def run_metrics(preset: str | None, settings: RunSettings, dataset: str, engine: Engine,
                history: History, traffic: Any = None) -> dict[str, Any]:
    """What `train --metrics-out` writes: the settings, where it ran, the history and totals,
    and, on a cluster, what crossed the network."""
    config, last = settings.config, history.last
    return {
        "preset": preset, "config": config.to_dict(), "dataset": dataset,
        "backend": engine.library, "device": engine.device_name, "device_name": engine.name,
        "dtype": config.dtype, "steps": history.steps, "steps_this_run": history.steps_here,
        "batch_size": config.batch_size or "full", "seconds": history.seconds,
        "seconds_this_run": history.seconds_here, "steps_per_second": history.rate,
        "train_accuracy": last["train_accuracy"], "test_accuracy": last["test_accuracy"],
        "final_loss": history.final_loss, "history": history.records,
        **({"bytes_per_step": traffic.per_step, "traffic": traffic._asdict()}
           if traffic else {}),
        "mnist_xp_version": __version__}


def evaluate(model: MLP, images: np.ndarray, labels: np.ndarray) -> Evaluation:
    """Accuracy and the 10x10 confusion matrix (rows: true digit, columns: predicted)."""
    predicted = model.predict(images)
    truth = np.asarray(labels, dtype=np.int64)
    confusion = np.bincount(truth * CLASSES + predicted, minlength=CLASSES * CLASSES)
    return Evaluation(float(np.mean(predicted == truth)) if len(truth) else math.nan,
                      confusion.reshape(CLASSES, CLASSES))
