"""NumPy's optimizer updates (mnist_xp/backends/numpy.py) against the Array API reference, per
training step, timed in interleaved rounds:

    python bench/numpy_updates.py [--rows 200] [--hidden 256] [--optimizer adam] [--steps 300]

The defaults are the mini-batch peer configuration (784-256-10, Adam, batches of 200);
`--rows 128 --hidden 800,800 --optimizer nesterov --steps 100` is the record preset's step.
Each round runs STEPS steps of the very TrainStep training runs on synthetic digits, once with
the reference tail and once with NumPy's, from the same weights; 9 rounds, medians, and the
ratio of each round.
"""
from __future__ import annotations

import argparse
import statistics
import time

from mnist_xp import nn
from mnist_xp.backends import numpy_backend
from mnist_xp.config import Config
from mnist_xp.model import MLP
from mnist_xp.step import LocalEngine
from mnist_xp.synthetic import synthetic_digits


def main(rows: int = 200, hidden: str = "256", optimizer: str = "adam", steps: int = 300
         ) -> None:
    backend = numpy_backend()
    engine = LocalEngine(backend)
    split = engine.place(synthetic_digits(rows, 0, 0), "train", "float32", 2048)
    config = Config(hidden=tuple(int(h) for h in hidden.split(",")), activation="relu",
                    loss="ce", optimizer=optimizer, lr=1e-3 if optimizer == "adam" else 0.05,
                    weight_decay=0.0)
    tails = {"reference": nn.ARRAY_API_TAIL, "numpy": backend.tail}
    train_steps = {name: engine.train_step(config, 2048, tail) for name, tail in tails.items()}
    start = MLP.initialise(config, backend, 0).params
    ms: dict[str, list[float]] = {name: [] for name in tails}
    for _ in range(9):
        for name, step in train_steps.items():
            params, state = start, step.initial_state(start)
            begin = time.perf_counter()
            for _ in range(steps):
                params, state, _ = step(params, state, split)
            ms[name].append(1e3 * (time.perf_counter() - begin) / steps)
    print(f"784-{hidden}-10, {optimizer}, batches of {rows}: median ms per step over 9 rounds")
    for name, times in ms.items():
        print(f"  {name}: {statistics.median(times):.3f}")
    ratios = [ours / theirs for ours, theirs in zip(ms["numpy"], ms["reference"])]
    print("  numpy / reference per round: " + ", ".join(f"{r:.2f}" for r in ratios))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--hidden", default="256")
    parser.add_argument("--optimizer", default="adam", choices=("adam", "momentum", "nesterov"))
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    main(args.rows, args.hidden, args.optimizer, args.steps)
