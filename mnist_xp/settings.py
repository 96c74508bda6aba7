"""The one settings gate: a run's settings (preset, flags, the checkpoint it resumes) checked
once, before any data loads. The command line calls check_run with its flags; train() calls it
with its keyword arguments, or takes the RunSettings the command line already checked.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checkpoint import Checkpoint
from .config import LENGTH, Config, resolve, resumed, setting
from .errors import UsageError
from .files import check_distinct, check_not_inputs, check_output
from .presets import get_preset

MAX_CHUNKS = 4096  # chunks a step's rows may be cut into (each costs a pass, or a Dask task)
# each engine's own default (Backend.default_chunk_rows, the cluster engine's CHUNKS_PER_WORKER)
CHUNK_SIZE_DEFAULT = ("2048 on a CPU; one pass on a GPU and with JAX; 10,000 with Dask; on a "
                      "cluster, 4 chunks a worker")


@dataclass(frozen=True)
class RunSettings:
    """A run's settings, checked: the configuration, the dataset it trains on, its length and
    its rhythm (evaluations, loss read-backs, checkpoints), and what it resumes."""

    config: Config
    dataset: str
    total_steps: int
    eval_every: int = setting(
        1, type=int, metavar="K",
        help="evaluate train and test accuracy every K steps (default: steps/10, and at "
             "least an epoch's steps)")
    log_every: int = setting(10, type=int, metavar="K",
                             help="read the loss back every K steps (default: 10)")
    chunk_size: int | None = setting(  # None: the engine's choice
        None, type=int, metavar="ROWS", help=f"compute each step's gradient over chunks of ROWS "
                                             f"rows (default: {CHUNK_SIZE_DEFAULT})")
    checkpoint: Path | None = setting(
        None, type=Path, metavar="FILE.npz",
        help="save weights, optimizer and RNG state and history here during training "
             "(atomically) and on Ctrl-C")
    checkpoint_every: int = setting(
        1, type=int, metavar="K", help="checkpoint every K steps (default: at every evaluation)")
    resume: Checkpoint | None = setting(
        None, type=Path, metavar="FILE.npz",
        help="continue the run saved in this checkpoint: flags may repeat its settings, and "
             "--steps or --epochs extend it")

    @property
    def first_step(self) -> int:
        return 1 if self.resume is None else self.resume.step + 1


def check_run(preset: str | Config | None = None, given: dict[str, Any] | None = None, *,
              train_rows: Callable[[str], int], resume: Checkpoint | None = None,
              dataset: str | None = None, eval_every: int | None = None,
              log_every: int | None = None,
              chunk_size: int | None = None, checkpoint: Path | None = None,
              checkpoint_every: int | None = None) -> RunSettings:
    """Check a run's settings and resolve their defaults; UsageError names the first that is
    wrong. `preset` is a preset's name or a Config (default: best, or the checkpoint's
    configuration with `resume`); `given` replaces its fields (config.resolve), and with
    `resume` may change only the length (config.resumed). `train_rows(dataset)` is the
    number of training rows of a dataset, for the run's length in steps."""
    for flag, value in (("--eval-every", eval_every), ("--log-every", log_every),
                        ("--chunk-size", chunk_size), ("--checkpoint-every", checkpoint_every)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} {value}: must be at least 1")
    if checkpoint_every is not None and checkpoint is None:
        raise UsageError("--checkpoint-every needs --checkpoint FILE.npz")
    given = dict(given or {})
    if resume is None:
        config = resolve(_as_config(preset) or get_preset("best"), given)
        dataset = dataset or "mnist"
    else:
        config = resumed(resume.config, _with_length(preset, given), _as_config(preset))
        if dataset not in (None, resume.dataset) and resume.dataset is not None:
            raise UsageError(f"--dataset {dataset}: the checkpoint's run trains on "
                             f"{resume.dataset}")
        dataset = resume.dataset or dataset or "mnist"
    rows = train_rows(dataset)
    total = config.total_steps(rows)  # a batch larger than the set is refused
    per_step = config.batch_size or rows * config.augment
    chunks = math.ceil(per_step / chunk_size) if chunk_size else 1
    if chunks > MAX_CHUNKS:
        raise UsageError(f"--chunk-size {chunk_size} cuts each step's {per_step:,} rows into "
                         f"{chunks:,} chunks, each a pass of its own; at most {MAX_CHUNKS:,}: "
                         f"use --chunk-size {math.ceil(per_step / MAX_CHUNKS)} or more")
    if resume is not None and resume.step >= total:
        raise UsageError(f"the checkpoint is already at step {resume.step} of {total}: pass "
                         f"--steps above {resume.step} to train further")
    if eval_every is None:  # ten a run, at most one an epoch: an evaluation runs forward
        # over every training row, a third of what an epoch of training costs
        eval_every = max(1, total // 10, config.epoch_steps(rows))
    log_every = 10 if log_every is None else log_every
    return RunSettings(config, dataset, total, eval_every, log_every, chunk_size, checkpoint,
                       checkpoint_every or eval_every, resume)


def _as_config(preset: str | Config | None) -> Config | None:
    return get_preset(preset) if isinstance(preset, str) else preset


def _with_length(preset: str | Config | None, given: dict[str, Any]) -> dict[str, Any]:
    """A Config given with a checkpoint asks for its own length (a preset's name does not:
    its length is a default, and the checkpoint's run keeps its own unless --steps or
    --epochs say otherwise)."""
    if not isinstance(preset, Config) or any(name in given for name in LENGTH):
        return given
    by_epochs = preset.batch_size is not None and preset.epochs is not None
    return {**given, **({"epochs": preset.epochs} if by_epochs else {"steps": preset.steps})}


def check_outputs(save: Path | None, metrics_out: Path | None, checkpoint: Path | None,
                  resume: Path | None) -> None:
    """The files a run writes: each writable, each its own, none the checkpoint resumed
    (--checkpoint may name it: it keeps that one up to date)."""
    check_output(save, "--save", "model.npz")
    check_output(metrics_out, "--metrics-out", "metrics.json")
    check_output(checkpoint, "--checkpoint", "checkpoint.npz")
    check_distinct([("--save", save), ("--metrics-out", metrics_out),
                    ("--checkpoint", checkpoint)])
    if save is not None and resume is not None and Path(save).resolve() == Path(resume).resolve():
        raise UsageError(f"--save {save} is the checkpoint given to --resume: the model "
                         f"would replace it, and a model cannot be resumed; --checkpoint "
                         f"{resume} keeps it up to date instead")
    check_not_inputs([(f"--metrics-out {metrics_out}", metrics_out)], [("--resume", resume)])
