"""The networks of the notebooks this project grew from, and one better than all of them."""

from __future__ import annotations

from .config import Config
from .errors import UsageError

PRESETS: dict[str, Config] = {
    # 784→10, sigmoid outputs, mean squared error, plain gradient descent (full batch).
    "dumbest": Config(hidden=(), output="sigmoid", loss="mse", optimizer="sgd", lr=1.0, steps=300),
    # 784→128 sigmoid→10 softmax, mean squared error, mini-batch SGD.
    "sigmoid128": Config(hidden=(128,), activation="sigmoid", output="softmax", loss="mse",
                         optimizer="sgd", lr=1.0, batch_size=64, epochs=10),
    # 784→10 ReLU→10 softmax, cross-entropy, full-batch gradient descent for 500 steps.
    "relu10": Config(hidden=(10,), activation="relu", loss="ce", optimizer="sgd", lr=0.5,
                     steps=500),
    # Two ReLU layers, cross-entropy, full-batch Adam with a little L2 weight decay. Measured
    # on MNIST: 784→512→256→10 reached 98.11% (seed 0) but 97.91% (seed 1) at 200 steps; the
    # wider first layer here clears 98% on both seeds.
    "best": Config(hidden=(1024, 256), activation="relu", loss="ce", optimizer="adam", lr=2e-3,
                   weight_decay=1e-4, steps=150),
}


def get_preset(name: str) -> Config:
    try:
        return PRESETS[name]
    except KeyError:
        raise UsageError(f"unknown preset {name!r}: choose from {', '.join(PRESETS)}") from None
