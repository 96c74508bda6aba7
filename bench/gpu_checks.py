"""The GPU checks of the first-GPU checklist (bench/gpu_check.sh runs them after the `gpu`
tests). Each check prints one line, ok, FAILED or skipped with what it saw; all of them go to
checks.json and checks.md in the output folder with the machine's description. Exit status 1 if
any failed.

Needs an NVIDIA GPU with CuPy and the project importable (installed, or on PYTHONPATH with
array-api-compat); run from the repository root: python3 bench/gpu_checks.py --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mnist_xp import Config, train
from mnist_xp.backends import Backend, numpy_backend, select_backend
from mnist_xp.errors import BackendError, DivergenceError
from mnist_xp.step import LocalEngine
from mnist_xp.synthetic import synthetic_digits, write_idx_folder

Result = tuple[bool | None, str]  # ok (None: skipped), what was seen


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """python -m mnist_xp ARGS in a fresh interpreter, as a user would run it."""
    return subprocess.run([sys.executable, "-m", "mnist_xp", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=600)


def largest_difference(got: list[np.ndarray], want: list[np.ndarray]) -> float:
    return max(float(np.max(np.abs(g.astype(np.float64) - w))) / float(np.max(np.abs(w)))
               for g, w in zip(got, want))


def fused_kernels_in_chunks(backend: Backend, data_dir: Path) -> Result:
    """The fused tail with a chunked full batch agrees with NumPy after 5 Adam steps."""
    data = synthetic_digits(n_train=1000, n_test=200)
    config = Config(hidden=(64, 32), optimizer="adam", lr=3e-3, weight_decay=1e-4, steps=5)
    gpu, _ = train(data, backend, config, chunk_size=256, eval_every=5)
    cpu, _ = train(data, numpy_backend(), config, chunk_size=256, eval_every=5)
    worst = largest_difference(gpu.host_params(), cpu.host_params())
    ok = backend.tail.name == "cupy-fused" and worst < 1e-4
    return ok, (f"{backend.tail.name} tail, 1000 rows in chunks of 256: largest difference "
                f"from NumPy {worst:.1e} of the largest weight")


def arrays_over_2_gib(backend: Backend, data_dir: Path) -> Result:
    """CuPy compiles 64-bit-index kernels for arrays over 2 GiB: the fused kernels must give
    NumPy's numbers there too, up to the very last element."""
    import cupy

    from mnist_xp import nn
    from mnist_xp.backends.cupy_kernels import cupy_tail

    tail = cupy_tail()
    seen = []
    with backend.activate():
        rng = cupy.random.default_rng(0)
        m, h = 40_000, 16_384  # 2.44 GiB of float32
        Z = rng.standard_normal((m, h), dtype=cupy.float32)
        b = rng.standard_normal(h, dtype=cupy.float32)
        rows = [0, m // 2, m - 1]
        want_A = np.maximum(cupy.asnumpy(Z[rows]) + cupy.asnumpy(b), 0)
        A, slope = tail.bias_relu(Z, b)
        A_ok = np.array_equal(cupy.asnumpy(A[rows]), want_A)
        dA = tail.relu_backward(cupy.ones_like(A), slope)
        dA_ok = np.array_equal(cupy.asnumpy(dA[rows]), (want_A > 0).astype(np.float32))
        seen.append(f"bias+ReLU and its backward on {m}x{h} float32 ({Z.nbytes / 2**30:.2f} "
                    f"GiB): rows 0, {m // 2}, {m - 1} {'match' if A_ok and dA_ok else 'DIFFER'}")
        del Z, A, dA, slope
        n = 56_000_000  # (n, 10) float32: 2.09 GiB each for logits, targets and gradient
        logits = rng.standard_normal((n, 10), dtype=cupy.float32)
        Y = cupy.zeros((n, 10), cupy.float32)
        Y[:, 3] = 1
        dZ = tail.softmax_ce_gradient(logits, Y, n)
        rows = [0, n // 2, n - 1]
        want = nn.softmax_ce_gradient(cupy.asnumpy(logits[rows]), cupy.asnumpy(Y[rows]), n)
        soft_ok = np.allclose(cupy.asnumpy(dZ[rows]), want, rtol=1e-5, atol=1e-12)
        seen.append(f"softmax-CE gradient on {n}x10 float32 ({logits.nbytes / 2**30:.2f} GiB): "
                    f"rows 0, {n // 2}, {n - 1} {'match' if soft_ok else 'DIFFER'}")
        del logits, Y, dZ
        cupy.get_default_memory_pool().free_all_blocks()
    return A_ok and dA_ok and soft_ok, "; ".join(seen)


def pool_limit_out_of_memory(backend: Backend, data_dir: Path) -> Result:
    """A pool too small for the run: exit 1, one line with the estimate and --chunk-size."""
    result = cli("train", "--preset", "best", "--steps", "2", "--device", backend.device_name,
                 "--quiet", "--data-dir", str(data_dir), env={"CUPY_GPU_MEMORY_LIMIT": "2000000"})
    err = result.stderr.strip()
    ok = (result.returncode == 1 and err.count("\n") == 0 and "--chunk-size" in err
          and "Traceback" not in err)
    return ok, f"CUPY_GPU_MEMORY_LIMIT=2000000: exit {result.returncode}, stderr {err!r}"


def divergence_on_the_gpu(backend: Backend, data_dir: Path) -> Result:
    """A learning rate of 1e30 makes the loss NaN or infinite on the GPU too, and it is caught."""
    try:
        train(synthetic_digits(), backend, "relu10", lr=1e30, steps=10, log_every=1)
    except DivergenceError as exc:
        return True, f"DivergenceError: {exc}"
    return False, "lr=1e30 trained 10 steps without the divergence stop"


def a_device_beyond_the_count(backend: Backend, data_dir: Path) -> Result:
    import cupy

    count = cupy.cuda.runtime.getDeviceCount()
    result = cli("train", "--device", f"cuda:{count}", "--data-dir", str(data_dir), "--quiet")
    err = result.stderr.strip()
    ok = result.returncode == 2 and err == (f"error: cuda:{count} does not exist: CuPy sees "
                                            f"{count} CUDA device(s)")
    return ok, f"--device cuda:{count}: exit {result.returncode}, stderr {err!r}"


def tf32_switch(backend: Backend, data_dir: Path) -> Result:
    """TF32 on changes float32 products (about 1e-3 relative error against 1e-6), off gives
    full FP32, and the previous setting comes back after the block."""
    import cupy
    from cupy._core import _routines_linalg as linalg

    if not backend.supports_tf32:
        return None, f"{backend.hardware}: compute capability below 8.0, no TF32"
    with backend.activate():
        a = cupy.random.default_rng(1).standard_normal((2048, 2048), dtype=cupy.float32)
        exact = a.astype(cupy.float64) @ a.astype(cupy.float64)
        before = linalg.get_compute_type(np.float32)
        errors = {}
        for mode in (False, True):
            with backend.tf32(mode):
                product = a @ a
            errors[mode] = float(cupy.max(cupy.abs(product - exact)) / cupy.max(cupy.abs(exact)))
        after = linalg.get_compute_type(np.float32)
    ok = errors[True] > 10 * errors[False] and before == after
    return ok, (f"largest relative error FP32 {errors[False]:.1e}, TF32 {errors[True]:.1e}; "
                f"compute type {before} before, {after} after")


def event_timing(backend: Backend, data_dir: Path) -> Result:
    """bench's CUDA-event step time agrees with cupyx.profiler.benchmark's within 10%."""
    import cupyx.profiler

    from mnist_xp.model import MLP

    data = synthetic_digits(n_train=60_000, n_test=10)
    config = Config(hidden=(128,), optimizer="adam")
    with backend.activate():
        engine = LocalEngine(backend)
        split = engine.place(data, "train", "float32")
        step = engine.train_step(config)
        params = MLP.initialise(config, backend).params
        state = step.initial_state(params)

        def one_step() -> None:
            step(params, state, split)  # the same inputs each time: a fixed workload

        for _ in range(3):
            one_step()
        events = statistics.median(backend.seconds(one_step) for _ in range(20))
        profiled = cupyx.profiler.benchmark(one_step, n_repeat=20, n_warmup=3)
        reference = float(np.median(profiled.gpu_times[0]))
    ratio = events / reference
    return abs(ratio - 1) < 0.1, (f"784→128→10 Adam step on 60,000 rows: CUDA events "
                                  f"{events * 1e3:.3f} ms, cupyx.profiler.benchmark "
                                  f"{reference * 1e3:.3f} ms (ratio {ratio:.3f})")


CHECKS: dict[str, Callable[[Backend, Path], Result]] = {
    "fused kernels with --chunk-size": fused_kernels_in_chunks,
    "arrays over 2 GiB (64-bit indexing)": arrays_over_2_gib,
    "a pool limit gives the out-of-memory message": pool_limit_out_of_memory,
    "divergence caught on the GPU": divergence_on_the_gpu,
    "cuda:N beyond the count: a clean error": a_device_beyond_the_count,
    "the TF32 switch changes the numbers and is restored": tf32_switch,
    "CUDA-event timing agrees with cupyx.profiler.benchmark": event_timing,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for checks.json/.md")
    parser.add_argument("--device", default="cuda", help="cuda or cuda:N (default: cuda)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    from mnist_xp.bench import machine_description

    try:
        backend = select_backend(args.device, "cupy")
    except BackendError as exc:
        print(f"no GPU to check: {exc}")
        return 1
    data_dir = args.out / "tiny-dataset"
    write_idx_folder(data_dir, synthetic_digits())
    results = []
    for name, check in CHECKS.items():
        try:
            ok, seen = check(backend, data_dir)
        except Exception as exc:  # a check that crashes has failed; the others still run
            ok, seen = False, f"{type(exc).__name__}: {exc} ({traceback.format_exc(limit=-2)})"
        verdict = "skipped" if ok is None else "ok" if ok else "FAILED"
        print(f"{verdict:>7}  {name}: {seen}", flush=True)
        results.append({"check": name, "verdict": verdict, "seen": seen})
    machine = machine_description([backend])
    (args.out / "checks.json").write_text(json.dumps(
        {"machine": machine, "backend": backend.name, "checks": results}, indent=2) + "\n")
    lines = [f"# GPU checks on {backend.name}", "", "| check | verdict | seen |",
             "|---|---|---|"]
    lines += [f"| {r['check']} | {r['verdict']} | {r['seen'].replace('|', '/')} |"
              for r in results]
    (args.out / "checks.md").write_text("\n".join(lines) + "\n")
    return 1 if any(r["verdict"] == "FAILED" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
