"""Everything that defines a training run, as one frozen dataclass that validates itself."""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from .data import CLASSES, PIXELS
from .distort import DISTORTIONS
from .errors import UsageError
from .nn import HIDDEN_ACTIVATIONS, LOSSES, OUTPUTS
from .optim import OPTIMIZERS
from .schedules import SCHEDULES, Schedule

DTYPES = ("float32", "float64")
FROM_PRESET = "default: the preset's"


def parse_hidden(text: str) -> tuple[int, ...]:
    """--hidden: '256,128' -> (256, 128); '' or 'none' -> () (no hidden layer)."""
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 256,128, got {text!r}") from None


def parse_batch_size(text: str) -> int | str:
    """--batch-size: 'full' (kept as the word, None in a Config) or a number."""
    if text == "full":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'full' or a number, got {text!r}") from None


def setting(default: Any, **flag: Any) -> Any:
    """A dataclass field with its command-line flag's argparse settings (help, choices,
    type), from which `mnist-xp train` makes its flags: one place for each setting."""
    return dataclasses.field(default=default, metadata={"flag": flag})


@dataclass(frozen=True)
class Config:
    """A network (784 → hidden... → 10) and how to train it.

    `batch_size=None` is full-batch gradient descent: each of `steps` steps uses every
    training image. With a batch size, `epochs` (when given) sets the length instead:
    steps = epochs · ⌈N / batch_size⌉ over shuffled mini-batches.
    """

    hidden: tuple[int, ...] = setting(
        (128,), type=parse_hidden, metavar="SIZES",
        help=f"hidden layer sizes, e.g. 256,128, or none ({FROM_PRESET})")
    activation: str = setting("relu", choices=HIDDEN_ACTIVATIONS, help=FROM_PRESET)
    output: str = setting("softmax", choices=OUTPUTS, help=FROM_PRESET)
    loss: str = setting("ce", choices=LOSSES, help=f"ce (cross-entropy) or mse ({FROM_PRESET})")
    optimizer: str = setting("adam", choices=tuple(OPTIMIZERS), help=FROM_PRESET)
    lr: float = setting(1e-3, type=float, help=f"learning rate ({FROM_PRESET})")
    momentum: float = setting(
        0.9, type=float, help="momentum coefficient, with --optimizer momentum or nesterov "
                              "(default: 0.9)")
    schedule: str = setting(
        "constant", choices=SCHEDULES,
        help=f"the learning rate over the run: constant, cosine decay towards 0, or step "
             f"decay (x0.1 past half the run, x0.01 past three quarters) ({FROM_PRESET})")
    warmup: int = setting(
        0, type=int, metavar="STEPS",
        help=f"steps over which the learning rate rises linearly to --lr ({FROM_PRESET})")
    weight_decay: float = setting(
        0.0, type=float, help=f"L2 penalty on the weight matrices ({FROM_PRESET})")
    steps: int = setting(
        500, type=int, help=f"optimizer steps; on a preset counted in epochs, the run's length "
                            f"in steps instead ({FROM_PRESET})")
    batch_size: int | None = setting(
        None, type=parse_batch_size, metavar="full|N",
        help=f"'full' (every training image each step) or N for shuffled mini-batches "
             f"({FROM_PRESET})")
    epochs: int | None = setting(
        None, type=int, help=f"passes over the shuffled mini-batches, with --batch-size N "
                             f"({FROM_PRESET})")
    seed: int = setting(0, type=int, help=FROM_PRESET)
    dtype: str = setting("float32", choices=DTYPES, help=FROM_PRESET)
    # copies of the training set (mnist_xp.augment): 1 is the set as it is
    augment: int = setting(
        1, type=int, metavar="K",
        help="train on K copies of the training set, each but the first shifted by up to 2 "
             "pixels (on a cluster, built on the workers; default: 1)")

    distort: str = setting(
        "none", choices=tuple(DISTORTIONS),
        help=f"distort the training images afresh each epoch (each step, full batch): "
             f"elastic (Simard 2003), affine, or both; computed where the data is "
             f"({FROM_PRESET})")

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        _choice("activation", self.activation, HIDDEN_ACTIVATIONS)
        _choice("output", self.output, OUTPUTS)
        _choice("loss", self.loss, LOSSES)
        _choice("optimizer", self.optimizer, tuple(OPTIMIZERS))
        _choice("dtype", self.dtype, DTYPES)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("distortion", self.distort, tuple(DISTORTIONS))
        if any(h < 1 for h in self.hidden):
            raise UsageError(f"hidden layer sizes must be at least 1, got {list(self.hidden)}")
        if self.loss == "ce" and self.output != "softmax":
            raise UsageError("cross-entropy (--loss ce) needs the softmax output")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise UsageError(f"the learning rate must be a positive number, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise UsageError(f"momentum must lie in [0, 1), got {self.momentum}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise UsageError(f"weight decay must be >= 0, got {self.weight_decay}")
        for name in ("steps", "batch_size", "epochs", "augment"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"{name.replace('_', ' ')} must be at least 1, got {value}")
        if self.warmup < 0:
            raise UsageError(f"warm-up must be >= 0 steps, got {self.warmup}")
        if self.seed < 0:
            raise UsageError(f"the seed must be >= 0, got {self.seed}")
        if self.epochs is not None and self.batch_size is None:
            raise UsageError(f"{self.epochs} epochs: epochs count passes over shuffled "
                             f"mini-batches (--batch-size N); a full-batch run is counted in "
                             f"--steps")

    @property
    def sizes(self) -> tuple[int, ...]:
        """Layer widths from input to output, e.g. (784, 128, 10)."""
        return (PIXELS, *self.hidden, CLASSES)

    def total_steps(self, n_train: int) -> int:
        """Optimizer steps for a training set of n_train rows (before augmentation)."""
        rows = n_train * self.augment
        if self.batch_size is not None and self.batch_size > rows:
            raise UsageError(f"batch size {self.batch_size} is larger than the "
                             f"{rows} training images")
        if self.batch_size is None or self.epochs is None:
            return self.steps
        return self.epochs * self.epoch_steps(n_train)

    def epoch_steps(self, n_train: int) -> int:
        """Steps of one pass over a training set of n_train rows (before augmentation): one
        in full batch, ⌈n_train·augment / batch⌉ in mini-batches."""
        if self.batch_size is None:
            return 1
        return math.ceil(n_train * self.augment / self.batch_size)

    def describe(self) -> str:
        """One line: '784→128→10 relu, softmax+ce, adam lr=0.001, full batch, 500 steps'."""
        shape = "→".join(map(str, self.sizes))
        acts = f"{self.activation}, " if self.hidden else ""
        batch = "full batch" if self.batch_size is None else f"batch {self.batch_size}"
        by_epoch = self.batch_size is not None and self.epochs is not None
        length = f"{self.epochs} epochs" if by_epoch else f"{self.steps} steps"
        decay = f", weight decay {self.weight_decay:g}" if self.weight_decay else ""
        copies = f", {self.augment} shifted copies of the data" if self.augment > 1 else ""
        pace = self.schedule_for(self.steps).describe()
        distorted = f", {self.distort} distortions" if self.distort != "none" else ""
        return (f"{shape} {acts}{self.output}+{self.loss}, {self.optimizer} lr={self.lr:g}"
                f"{f' ({pace})' if pace else ''}{decay}, {batch}, {length}{copies}{distorted}")

    def schedule_for(self, total_steps: int) -> Schedule:
        """The learning rate's schedule over a run of total_steps steps (a constant rate's
        does not depend on them: a compiled step serves runs of any length)."""
        return Schedule(self.schedule, self.warmup,
                        1 if self.schedule == "constant" else total_steps)

    def replace(self, **changes: Any) -> Config:
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise UsageError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "hidden": list(self.hidden)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Config:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


LENGTH = ("steps", "epochs")


def flag(field: str) -> str:
    """The command-line flag of a Config field: weight_decay -> --weight-decay."""
    return "--" + field.replace("_", "-")


def resolve(base: Config, given: dict[str, Any]) -> Config:
    """`base` with the fields in `given` replaced. Steps and epochs both set the run's length:
    `steps` without `epochs` means steps, even where the base counts epochs, and both at once
    are refused; `momentum` is refused unless the optimizer has momentum."""
    given = dict(given)
    if "steps" in given and "epochs" in given:
        raise UsageError("--steps and --epochs both set the run's length: give one of them")
    if "steps" in given:
        given["epochs"] = None
    config = base.replace(**given)
    if "activation" in given and not config.hidden:
        raise UsageError(f"--activation {config.activation} is for hidden layers, and this "
                         f"network has none (--hidden none)")
    if "momentum" in given and config.optimizer not in ("momentum", "nesterov"):
        raise UsageError(f"--momentum is for --optimizer momentum or nesterov; this run uses "
                         f"{config.optimizer}")
    return config


def resumed(saved: Config, given: dict[str, Any], preset: Config | None = None) -> Config:
    """The configuration that continues a checkpoint's run (`saved`). Flags that equal the
    checkpoint's settings are accepted, so the command that started a run, with --resume
    added, continues it; a preset must match it too. Only the length (steps, epochs) may
    change; anything else that differs is refused, naming the checkpoint's value."""
    given = dict(given)
    length = {name: given.pop(name) for name in LENGTH if name in given}
    asked = resolve(preset, given) if preset is not None else None
    differing = []
    for f in dataclasses.fields(Config):
        if f.name in LENGTH:
            continue
        mine = given.get(f.name) if asked is None else getattr(asked, f.name)
        if (f.name in given or asked is not None) and mine != getattr(saved, f.name):
            differing.append((f.name, f"{flag(f.name)} {_shown(mine)} (the checkpoint's: "
                                      f"{_shown(getattr(saved, f.name))})"))
    if differing:
        raise UsageError("--resume continues the checkpoint's run, and these differ from it: "
                         + "; ".join(text for _, text in differing) + "; only --steps and "
                         "--epochs may change, not " + ", ".join(name for name, _ in differing))
    return resolve(saved, length)


def _shown(value: Any) -> str:
    if value is None:
        return "full"  # the only None-valued setting that differs in practice: batch size
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "none"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise UsageError(f"unknown {name} {value!r}: choose from {', '.join(allowed)}")
