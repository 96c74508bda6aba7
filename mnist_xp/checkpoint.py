"""Checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint is a model file (evaluate, predict and report read it as one) with more inside:
the optimizer's state arrays (Adam's m and v, momentum's velocity) and step count t, the
shuffling RNG's state and position for mini-batches, the steps done and the history so far.
It is written atomically, so a crash or Ctrl-C during the write leaves the previous one whole.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import Config
from .errors import DataError
from .files import write_or_keep
from .model import MLP
from .modelfile import read_model_file


@dataclass
class Checkpoint:
    """A run's state after `step` optimizer steps, on the host."""

    config: Config
    params: list[np.ndarray]
    step: int
    optimizer_t: int
    optimizer_state: dict[str, list[np.ndarray]]
    batches: dict[str, Any] = field(default_factory=dict)
    records: list[dict[str, float]] = field(default_factory=list)
    final_loss: float = float("nan")
    dataset: str | None = None


def save_checkpoint(path: Path, model: MLP, optimizer_state: dict[str, Any], step: int,
                    batches: dict[str, Any], records: list[dict[str, float]],
                    final_loss: float) -> Path | None:
    """Write the model, the optimizer's state (its step count t and per-parameter lists) and
    the run's bookkeeping, atomically. Where `path` cannot be written (the disk filled, the
    folder went away) it is written to the temporary folder instead: returns where, None when
    at `path`; OSError when it could be written nowhere."""
    to_numpy = model.backend.to_numpy
    arrays = {f"{name}{i}": to_numpy(a) for name, values in optimizer_state.items()
              if name != "t" for i, a in enumerate(values)}
    t = round(float(to_numpy(optimizer_state["t"])))
    extra = {"kind": "checkpoint", "step": step, "optimizer_t": t,
             "batches": batches, "history": records,
             "final_loss": final_loss if math.isfinite(final_loss) else None}
    return write_or_keep(Path(path), model.npz_writer(extra, arrays))


def load_checkpoint(path: Path) -> Checkpoint:
    """Read and check a checkpoint: the model checks (version, shapes, dtypes, no pickle),
    then the optimizer state's names, shapes and dtypes and the bookkeeping fields."""
    saved = read_model_file(path)
    config, params, meta, arrays = saved
    if meta.get("kind") != "checkpoint":
        raise DataError(f"{path}: a saved model, not a checkpoint (no optimizer state to "
                        f"resume from); train with --checkpoint FILE to write one")
    from .optim import OPTIMIZERS

    names = OPTIMIZERS[config.optimizer].STATE  # read and checked with the parameters
    state = {name: [arrays[f"{name}{i}"] for i in range(len(params))] for name in names}
    for name, kind, what in (("step", int, "a step number"), ("optimizer_t", int,
                             "a step count"), ("batches", dict, "an object"),
                             ("history", list, "a list"), ("final_loss", (float, int, type(None)),
                                                         "a number")):
        value = meta.get(name)
        if not isinstance(value, kind) or isinstance(value, bool) or (
                kind is int and value < 0):
            raise DataError(f"{path}: bad checkpoint bookkeeping (the field '{name}' is not "
                            f"{what})")
    step, t = meta["step"], meta["optimizer_t"]
    batches, records = dict(meta["batches"]), list(meta["history"])
    final_loss = math.nan if meta["final_loss"] is None else float(meta["final_loss"])
    if batches:
        _check_batches(batches, path)
    return Checkpoint(config, params, step, t, state, batches, records, final_loss,
                      saved.dataset)


def _check_batches(batches: dict[str, Any], path: Path) -> None:
    """A mini-batch run's shuffling state: NumPy's PCG64 state and a position >= 0."""
    position = batches.get("position")
    if not isinstance(position, int) or isinstance(position, bool) or position < 0:
        raise DataError(f"{path}: bad checkpoint bookkeeping (the field 'batches.position' is "
                        f"not a row number)")
    try:
        np.random.default_rng().bit_generator.state = batches.get("rng")
    except (TypeError, ValueError, KeyError) as exc:
        raise DataError(f"{path}: bad checkpoint bookkeeping (the field 'batches.rng' is not "
                        f"a generator state: {exc})") from None
