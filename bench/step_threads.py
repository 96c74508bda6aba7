"""Can threads hide the NumPy step's element-wise work? A pure-NumPy copy of the full-batch
step (784-H-10, 2048-row chunks, softmax cross-entropy, no update) timed four ways beside its
two big products, in interleaved rounds:

    python bench/step_threads.py [--hidden 128] [--rounds 9]

- serial: the chunks one after another, BLAS on all cores (what mnist_xp does);
- split element-wise: the same, with ReLU and its mask cut in two halves of rows, one on a
  second thread;
- chunk threads: two threads taking alternate chunks, BLAS on all cores in each;
- chunk threads, 1-thread BLAS: the same with OpenBLAS held to one thread (needs
  threadpoolctl: `pip install threadpoolctl`; skipped without it).
"""
from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

ROWS, CHUNK = 60_000, 2048


def main(hidden: int, rounds: int) -> None:
    rng = np.random.default_rng(0)
    X = rng.random((ROWS, 784), dtype=np.float32)
    W1 = rng.standard_normal((784, hidden), dtype=np.float32) * 0.05
    b1 = np.zeros(hidden, np.float32)
    W2 = rng.standard_normal((hidden, 10), dtype=np.float32) * 0.05
    b2 = np.zeros(10, np.float32)
    Y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, ROWS)]
    dZ1 = rng.standard_normal((ROWS, hidden), dtype=np.float32)
    helper = ThreadPoolExecutor(1)
    pair = ThreadPoolExecutor(2)

    def products() -> None:
        X @ W1, X.T @ dZ1

    def relu(Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        Z += b1
        slope = (Z > 0).astype(np.float32)
        Z *= slope
        return Z, slope

    def relu_split(Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        slope, half = np.empty_like(Z), Z.shape[0] // 2

        def part(a: int, b: int) -> None:
            z = Z[a:b]
            z += b1
            np.greater(z, 0, out=slope[a:b])
            z *= slope[a:b]
        other = helper.submit(part, half, Z.shape[0])
        part(0, half)
        other.result()
        return Z, slope

    def chunk(start: int, g=relu) -> list[np.ndarray]:
        x, y = X[start:start + CHUNK], Y[start:start + CHUNK]
        A, slope = g(x @ W1)
        Z2 = A @ W2
        Z2 += b2
        E = np.exp(Z2 - Z2.max(1, keepdims=True))
        dZ2 = (E / E.sum(1, keepdims=True) - y) / ROWS
        dA = dZ2 @ W2.T
        dA *= slope
        return [x.T @ dA, dA.sum(0), A.T @ dZ2, dZ2.sum(0)]

    def summed(starts: range | list[int], g=relu) -> list[np.ndarray]:
        total = None
        for start in starts:
            grads = chunk(start, g)
            total = grads if total is None else [a + b for a, b in zip(total, grads)]
        return total

    starts = list(range(0, ROWS, CHUNK))

    def chunk_threads() -> None:
        halves = [pair.submit(summed, starts[i::2]) for i in range(2)]
        [h.result() for h in halves]

    ways = {"two products": products, "serial": lambda: summed(starts),
            "split element-wise": lambda: summed(starts, relu_split),
            "chunk threads": chunk_threads}
    try:
        from threadpoolctl import threadpool_limits

        def one_thread_blas() -> None:
            with threadpool_limits(1, "blas"):
                chunk_threads()
        ways["chunk threads, 1-thread BLAS"] = one_thread_blas
    except ImportError:
        pass
    ms: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(rounds + 1):  # the first round warms up
        for name, way in ways.items():
            begin = time.perf_counter()
            way()
            ms[name].append(1e3 * (time.perf_counter() - begin))
    print(f"784-{hidden}-10, {ROWS} rows in chunks of {CHUNK}: median ms of {rounds} rounds")
    for name, times in ms.items():
        print(f"  {name}: {statistics.median(times[1:]):.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    main(args.hidden, args.rounds)
