"""The CPU-vs-GPU benchmark: full-batch training steps timed on every device, with their FLOP
rate, share of the device's peak, dataset transfer time, peak memory, GPU/CPU speedup, the same
step hand-written in PyTorch, and the time the `best` preset needs to reach 97% and 98%.

Synthetic digits of MNIST's shape (mnist_xp.synthetic) stand in for the data in the step
timings: dense matrix work takes the same time whatever the pixel values. Time to accuracy
trains on the real data.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Any

import numpy as np

from . import nn
from .backends import Backend
from .backends.base import library_version
from .config import Config
from .data import CLASSES, Dataset
from .engines import Engine, as_engine
from .model import MLP
from .presets import get_preset
from .synthetic import synthetic_digits
from .train import train

# Environment variables that change how BLAS runs (kernels, cache sizes, threads), recorded
# with the results: a host may pin OpenBLAS to narrower kernels than its CPU has.
BLAS_SETTINGS = ("OPENBLAS_", "GOTO_", "OMP_", "MKL_")

# Vendor datasheet peaks (dense, no sparsity), FLOP/s, by a substring of CuPy's device name;
# the first match wins. float64 uses the FP64 tensor-core rate, which cuBLAS's DGEMM uses.
GPU_PEAKS: list[tuple[str, dict[str, float]]] = [
    ("H200 NVL", {"float32": 60e12, "tf32": 417e12, "float64": 60e12}),
    ("H200", {"float32": 67e12, "tf32": 495e12, "float64": 67e12}),
    ("H100 PCIe", {"float32": 51e12, "tf32": 378e12, "float64": 51e12}),
    ("H100 NVL", {"float32": 60e12, "tf32": 418e12, "float64": 60e12}),
    ("H100", {"float32": 67e12, "tf32": 495e12, "float64": 67e12}),  # SXM (80GB HBM3)
    ("A100", {"float32": 19.5e12, "tf32": 156e12, "float64": 19.5e12}),
    ("L4", {"float32": 30.3e12, "tf32": 60e12, "float64": 0.47e12}),
]


def flops_per_step(sizes: tuple[int, ...], rows: int) -> int:
    """Matrix-product FLOPs of one full-batch step: each layer of fan-in a and fan-out b costs
    2·N·a·b for Z = A·W, 2·N·a·b for dW = Aᵀ·dZ and, above the first layer, 2·N·a·b for
    dA = dZ·Wᵀ. For 784→H→10: N·H·(4·784 + 6·10)."""
    return sum(2 * rows * a * b * (2 if layer == 0 else 3)
               for layer, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])))


def cpu_description() -> dict[str, Any]:
    """The host CPU: model, usable cores, clock, and the widest FMA the flags show."""
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as lines:
            for line in lines:
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    flags = set(info.get("flags", "").split())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"model": info.get("model name") or platform.processor() or platform.machine(),
            "cores": cores, "mhz": float(info.get("cpu MHz", 0) or 0),
            "vendor": info.get("vendor_id", ""), "zen5": "avx512_vp2intersect" in flags
            and info.get("vendor_id") == "AuthenticAMD",
            "fma": "avx512" if "avx512f" in flags else "avx2" if "fma" in flags else ""}


def cpu_peak(dtype: str) -> tuple[float | None, str]:
    """Nominal peak: cores × clock × FMA FLOP per cycle. Two FMA pipes of 256 bits give 32
    float32 FLOP per cycle; two of 512 bits 64 (Intel's AVX-512 server cores, AMD Zen 5, told
    apart from Zen 4, which runs AVX-512 on 256-bit pipes, by its VP2INTERSECT flag)."""
    cpu = cpu_description()
    if not cpu["mhz"] or not cpu["fma"]:
        return None, "unknown (no clock or FMA flags in /proc/cpuinfo)"
    wide = cpu["fma"] == "avx512" and (cpu["vendor"] == "GenuineIntel" or cpu["zen5"])
    per_cycle = 64 if wide else 32
    if dtype == "float64":
        per_cycle //= 2
    peak = cpu["cores"] * cpu["mhz"] * 1e6 * per_cycle
    pipes = "2x512" if wide else "2x256"
    return peak, (f"{cpu['cores']} cores × {cpu['mhz'] / 1e3:.2f} GHz × {per_cycle} {dtype} "
                  f"FLOP/cycle ({pipes}-bit FMA) = {peak / 1e9:.0f} GFLOP/s nominal")


def gpu_peak(gpu_name: str, dtype: str, tf32: bool) -> tuple[float | None, str]:
    kind = "tf32" if tf32 and dtype == "float32" else dtype
    for key, peaks in GPU_PEAKS:
        if key in gpu_name:
            label = {"tf32": "TF32 tensor core", "float32": "FP32", "float64": "FP64 tensor core"}
            return peaks[kind], (f"{key} {label[kind]} {peaks[kind] / 1e12:.1f} TFLOP/s "
                                 f"(NVIDIA datasheet, dense)")
    return None, f"unknown for {gpu_name!r}"


def machine_description(backends: list[Backend]) -> dict[str, Any]:
    """What ran the benchmark: CPU, GPUs with driver, library versions and BLAS settings."""
    import array_api_compat

    blas = np.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
    machine: dict[str, Any] = {
        "cpu": cpu_description(), "python": platform.python_version(),
        "platform": platform.platform(), "numpy": np.__version__,
        "blas": f"{blas.get('name', '?')} {blas.get('version', '')}".strip(),
        "array_api_compat": array_api_compat.__version__,
        "blas_settings": {name: value for name, value in sorted(os.environ.items())
                          if name.startswith(BLAS_SETTINGS)}}
    try:
        import torch

        machine["torch"] = torch.__version__
    except ImportError:
        pass
    for backend in backends:
        machine.setdefault("libraries", {})[backend.library] = library_version(backend.library)
        if backend.on_gpu:
            machine.setdefault("gpus", []).append(backend.name)
        if backend.library == "cupy":
            import cupy

            machine["cupy"] = cupy.__version__
            machine["cuda_driver"] = cupy.cuda.runtime.driverGetVersion()
            machine["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
    return machine


def measure_case(backend: Backend | Engine, hidden: tuple[int, ...], dtype: str = "float32", *,
                 tf32: bool = False, tail: nn.Tail | None = None, rows: int = 60_000,
                 repeats: int = 20, warmup: int = 3, chunk_size: int | None = None,
                 seed: int = 0) -> dict[str, Any]:
    """Time one case: the median full-batch step (forward, backward, Adam, no loss value, as
    between log points in training), the very TrainStep that training runs, and, interleaved
    with it so both see the same machine load, the median of the step's two big products X·W1
    and Xᵀ·dZ1 alone. On a cluster, the bytes a step moves and the cost of a step with
    almost no rows stand where the products would."""
    engine = as_engine(backend)
    backend = engine.backend
    chunk_size = engine.default_chunk_rows if chunk_size is None else chunk_size
    backend.check_dtype(dtype)
    data = synthetic_digits(rows, 0, seed)
    config = Config(hidden=hidden, activation="relu", loss="ce", optimizer="adam", dtype=dtype)
    xp = backend.xp
    with backend.activate(), backend.tf32(tf32):
        # the first transfer pays one-off kernel compiles on a GPU: the median of 3
        transfer_s = [backend.seconds(lambda: engine.place(data, "train", dtype, chunk_size))
                      for _ in range(3)]
        with engine.peak_memory() as peak:  # the data, the model and one step (it compiles)
            split = engine.place(data, "train", dtype, chunk_size)
            model = MLP.initialise(config, backend, seed)
            train_step = engine.train_step(config, chunk_size, tail)
            params, state, _ = train_step(model.params, train_step.initial_state(model.params),
                                          split)
            params, state = backend.ready((params, state))
        on_one_device = engine.traffic() is None  # not spread over a cluster's workers
        if on_one_device:
            W1 = params[0]
            dZ1 = backend.asarray(np.random.default_rng(seed).standard_normal(
                (rows, W1.shape[1])).astype(dtype), chunk_rows=chunk_size)

        def step(batch: Any = split) -> Any:
            nonlocal params, state
            params, state, _ = train_step(params, state, batch)
            return params, state

        def products() -> Any:
            return split.X @ W1, xp.matrix_transpose(split.X) @ dZ1

        for _ in range(warmup):
            backend.ready(step())
            if on_one_device:
                backend.ready(products())
        step_s, product_s = [], []
        moved_before = _moved(engine)
        for _ in range(repeats):
            step_s.append(backend.seconds(step))
            if on_one_device:
                product_s.append(backend.seconds(products))
        cluster = {}
        if not on_one_device:  # bytes on the wire, and what a step costs with no arithmetic
            workers = len(engine.workers)
            cluster["bytes_per_step"] = (_moved(engine) - moved_before) / repeats
            cluster["parameter_bytes"] = sum(np.asarray(p).nbytes for p in params)
            cluster["workers"] = workers
            tiny = engine.place(synthetic_digits(4 * workers, 0, seed), "train", dtype, 1)
            cluster["overhead_ms"] = 1e3 * statistics.median(
                backend.seconds(lambda: step(tiny)) for _ in range(max(5, repeats // 2)))
    step_ms = 1e3 * statistics.median(step_s)
    product_ms = 1e3 * statistics.median(product_s) if product_s else None
    flops = flops_per_step(config.sizes, rows)
    if engine.on_gpu:
        peak_flops, peak_name = gpu_peak(backend.hardware, dtype, tf32)
    else:
        peak_flops, peak_name = cpu_peak(dtype)
    gflops = flops / (step_ms / 1e3) / 1e9
    return {"device": engine.device_name, "library": engine.library, "backend": engine.name,
            "hidden": list(hidden), "dtype": dtype,
            "tf32": tf32 if engine.on_gpu and dtype == "float32" else None,
            "tail": train_step.tail.name, "compiled": train_step.traces < warmup + 1,
            "rows": rows, "chunk_size": chunk_size, "repeats": repeats,
            "step_ms": step_ms, "products_ms": product_ms, "step_over_products":
            step_ms / product_ms if product_ms else None, "gflop_per_step": flops / 1e9,
            "gflops": gflops,
            "peak_gflops": peak_flops / 1e9 if peak_flops else None,
            "percent_of_peak": 100 * gflops * 1e9 / peak_flops if peak_flops else None,
            "peak": peak_name, "to_device_ms": 1e3 * statistics.median(transfer_s),
            "peak_memory_bytes": peak[0], **cluster}


def _moved(engine: Engine) -> int:
    """Bytes a cluster's steps have moved so far (0 off a cluster)."""
    traffic = engine.traffic()
    return 0 if traffic is None else traffic.out + traffic.back + traffic.between


def torch_step_ms(device: str, hidden: tuple[int, ...], dtype: str = "float32", *,
                  tf32: bool = False, rows: int = 60_000, repeats: int = 20, warmup: int = 3,
                  seed: int = 0) -> float:
    """Median ms of the same full-batch step hand-written in PyTorch: the same shapes, init,
    ReLU, softmax cross-entropy gradient, backprop by hand (no autograd) and Adam, one pass
    over all rows, timed with CUDA events on a GPU."""
    import torch

    from .model import init_params

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    tdtype = getattr(torch, dtype)
    data = synthetic_digits(rows, 0, seed)
    X = torch.as_tensor(data.train_images, device=dev).to(tdtype) / 255.0
    Y = torch.nn.functional.one_hot(torch.as_tensor(data.train_labels, device=dev).long(),
                                    CLASSES)
    Y = Y.to(tdtype)
    config = Config(hidden=hidden, activation="relu", dtype=dtype)
    params = [torch.as_tensor(p, device=dev) for p in init_params(config, seed)]
    m_state = [torch.zeros_like(p) for p in params]
    v_state = [torch.zeros_like(p) for p in params]
    lr, beta1, beta2, eps = config.lr, 0.9, 0.999, 1e-8
    t = 0

    def step() -> None:
        nonlocal t
        t += 1
        layers = len(params) // 2
        inputs = [X]
        for layer in range(layers - 1):
            inputs.append(torch.addmm(params[2 * layer + 1], inputs[-1], params[2 * layer])
                          .relu_())
        Z = torch.addmm(params[-1], inputs[-1], params[-2])
        dZ = torch.softmax(Z, dim=1).sub_(Y).div_(rows)
        grads = [None] * len(params)
        for layer in reversed(range(layers)):
            grads[2 * layer] = inputs[layer].T @ dZ
            grads[2 * layer + 1] = dZ.sum(dim=0)
            if layer > 0:
                dZ = (dZ @ params[2 * layer].T).mul_(inputs[layer] > 0)
        root2 = (1 - beta2**t) ** 0.5
        step_size, eps_hat = lr * root2 / (1 - beta1**t), eps * root2
        for p, g, m, v in zip(params, grads, m_state, v_state):
            m.mul_(beta1).add_(g, alpha=1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            p.addcdiv_(m, v.sqrt().add_(eps_hat), value=-step_size)

    def timed() -> float:
        if cuda:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        begin = time.perf_counter()
        step()
        return time.perf_counter() - begin

    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        for _ in range(warmup + 1):
            step()
        if cuda:
            torch.cuda.synchronize(dev)
        return 1e3 * statistics.median(timed() for _ in range(repeats))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


# The test accuracies time to accuracy waits for, by preset (default: DEFAULT_TARGETS).
ACCURACY_TARGETS = {"record": (0.98, 0.99, 0.994)}
DEFAULT_TARGETS = (0.97, 0.98)


def time_to_accuracy(data: Dataset, backend: Backend, preset: str = "best",
                     eval_every: int | None = None) -> dict[str, Any]:
    """Training seconds (evaluations excluded) until `preset` first reaches each test accuracy
    of ACCURACY_TARGETS, checked every `eval_every` steps (default: 5 in full batch, once per
    epoch in mini-batches). A 2-step run first pays the one-off costs (kernel compiles, cuBLAS
    start-up) so that they are not counted. The run stops at the last target or its end."""
    config = get_preset(preset)
    targets = ACCURACY_TARGETS.get(preset, DEFAULT_TARGETS)
    if eval_every is None:
        eval_every = (5 if config.batch_size is None else
                      config.epoch_steps(len(data.train_labels)))
    train(data, backend, config.replace(steps=2, epochs=None), log_every=2)
    _, history = train(data, backend, preset, eval_every=eval_every, log_every=eval_every,
                       stop_at_accuracy=max(targets), progress=True)
    reached: dict[str, Any] = {}
    for target in targets:
        hit = next((r for r in history.records if r["test_accuracy"] >= target), None)
        reached[f"{100 * target:g}%"] = (None if hit is None else
                                         {"seconds": hit["train_seconds"], "step": hit["step"]})
    return {"device": backend.device_name, "backend": backend.name, "preset": preset,
            "eval_every": eval_every, "reached": reached, "steps_run": history.steps,
            "final_test_accuracy": history.last.get("test_accuracy")}
