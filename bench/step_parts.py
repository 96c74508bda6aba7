"""Where the NumPy full-batch step's time goes beyond its two big products, at H = 128, in a
pure-NumPy copy of the step (2048-row chunks, as mnist_xp's NumPy backend runs it):

    python bench/step_parts.py [--rounds 9] [--hidden 128]

Part 1 times the step built up layer by layer, each in every round (interleaved, so that all
see the same machine load): the two big products per chunk (X·W1 and Xᵀ·dZ1) alone; with the
output layer's small products added; with the element-wise work added (bias, ReLU and its
slope, softmax, the slope product): the whole step but Adam; and mnist_xp's own TrainStep
on the same rows, Adam included. Beside them, the two products over all rows in one call
each, which is what `mnist-xp bench`'s "step / 2 products" divides by. Part 2 times ways of
writing the ReLU's forward and backward in NumPy, each inside the chunk loop of the first
product, and subtracts that loop alone. Medians in ms a step.
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

from mnist_xp.backends import numpy_backend
from mnist_xp.config import Config
from mnist_xp.step import DeviceSplit, TrainStep

ROWS, CHUNK = 60_000, 2048


def relu_ours(Z: np.ndarray, dA: np.ndarray, b: np.ndarray) -> None:
    """What mnist_xp does (nn.bias_relu, nn.times_slope): a float slope, multiplied in."""
    Z += b
    slope = (Z > 0).astype(np.float32)
    Z *= slope
    dA *= slope


def relu_greater_out(Z: np.ndarray, dA: np.ndarray, b: np.ndarray) -> None:
    Z += b
    slope = np.greater(Z, 0, out=np.empty_like(Z))
    Z *= slope
    dA *= slope


def relu_heaviside(Z: np.ndarray, dA: np.ndarray, b: np.ndarray) -> None:
    Z += b
    slope = np.heaviside(Z, 0)
    Z *= slope
    dA *= slope


def relu_maximum_sign(Z: np.ndarray, dA: np.ndarray, b: np.ndarray) -> None:
    Z += b
    np.maximum(Z, 0, out=Z)
    dA *= np.sign(Z)


def relu_maximum_bool(Z: np.ndarray, dA: np.ndarray, b: np.ndarray) -> None:
    Z += b
    np.maximum(Z, 0, out=Z)
    np.multiply(dA, Z > 0, out=dA)


def relu_bool_index(Z: np.ndarray, dA: np.ndarray, b: np.ndarray) -> None:
    Z += b
    negative = Z <= 0
    Z[negative] = 0
    dA[negative] = 0


def relu_copyto(Z: np.ndarray, dA: np.ndarray, b: np.ndarray) -> None:
    Z += b
    negative = Z <= 0
    np.copyto(Z, 0, where=negative)
    np.copyto(dA, 0, where=negative)


RELUS = {"ours: (Z > 0).astype, multiply": relu_ours,
         "np.greater(out=float32)": relu_greater_out, "np.heaviside": relu_heaviside,
         "np.maximum, np.sign": relu_maximum_sign, "np.maximum, bool multiply": relu_maximum_bool,
         "bool mask indexing": relu_bool_index, "np.copyto(where=)": relu_copyto}


def medians(cases: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, case in cases.items():
            begin = time.perf_counter()
            case()
            times[name].append(time.perf_counter() - begin)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def main(rounds: int, hidden: int) -> None:
    rng = np.random.default_rng(0)
    X = (rng.random((ROWS, 784)) * (rng.random((ROWS, 784)) < 0.2)).astype(np.float32)
    Y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, ROWS)]
    W1 = (0.05 * rng.standard_normal((784, hidden))).astype(np.float32)
    b1 = (0.1 * rng.standard_normal(hidden)).astype(np.float32)
    W2 = (0.05 * rng.standard_normal((hidden, 10))).astype(np.float32)
    b2 = np.zeros(10, np.float32)
    dZ1 = rng.standard_normal((ROWS, hidden)).astype(np.float32)
    ones10 = np.ones((10, 1), np.float32)

    def step(small: bool, elementwise: bool) -> None:
        total = None
        for start in range(0, ROWS, CHUNK):
            Xc, Yc = X[start:start + CHUNK], Y[start:start + CHUNK]
            Z = Xc @ W1
            if elementwise:
                Z += b1
                slope = (Z > 0).astype(np.float32)
                Z *= slope
            dA = Z
            if small:
                Z2 = Z @ W2
                if elementwise:
                    Z2 += b2
                    S = Z2 - Z2.T.copy().max(axis=0)[:, None]
                    E = np.exp(S)
                    dZ2 = (E / (E @ ones10) - Yc) / ROWS
                else:
                    dZ2 = Yc
                Z.T @ dZ2, np.ones((1, len(Z)), np.float32) @ dZ2
                dA = dZ2 @ W2.T
            if elementwise:
                dA *= slope
                np.ones((1, len(dA)), np.float32) @ dA
            part = Xc.T @ dA
            total = part if total is None else total + part

    backend = numpy_backend()
    config = Config(hidden=(hidden,), activation="relu", loss="ce", optimizer="adam")
    train_step = TrainStep(backend, config, CHUNK)
    split = DeviceSplit(X, np.argmax(Y, axis=1), Y)
    params = [W1, b1, W2, b2]
    state = [train_step.initial_state(params)]

    def ours() -> None:
        _, state[0], _ = train_step(params, state[0], split)

    built = medians({"the 2 big products, per chunk": lambda: step(False, False),
                     "+ the output layer's small products": lambda: step(True, False),
                     "+ the element-wise work (the step but Adam)": lambda: step(True, True),
                     "mnist_xp's TrainStep (the whole step, Adam included)": ours,
                     "the 2 products over all rows (bench's divisor)":
                         lambda: (X @ W1, X.T @ dZ1)}, rounds)
    print(f"H = {hidden}, {ROWS:,} rows in chunks of {CHUNK}, medians of {rounds} rounds:")
    for name, ms in built.items():
        print(f"  {name}: {ms:.1f} ms")

    D = rng.standard_normal((CHUNK, hidden)).astype(np.float32)

    def loop(relu: Callable[..., None] | None) -> None:
        for start in range(0, ROWS, CHUNK):
            Z = X[start:start + CHUNK] @ W1
            dA = D[:len(Z)].copy()
            if relu is not None:
                relu(Z, dA, b1)

    timed = medians({"none": lambda: loop(None),
                     **{name: (lambda r=relu: loop(r)) for name, relu in RELUS.items()}}, rounds)
    alone = timed.pop("none")
    print(f"ReLU forward and backward, ms a step beyond the product loop alone ({alone:.1f} ms):")
    for name, ms in timed.items():
        print(f"  {name}: {ms - alone:.1f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--hidden", type=int, default=128)
    args = parser.parse_args()
    main(args.rounds, args.hidden)
