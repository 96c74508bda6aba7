"""What `mnist-xp bench` runs: the backends for its --device and --backend (or the clusters of
--workers and --scheduler), every case of each, time to accuracy, and the result that
bench_report turns into Markdown, JSON and a plot. `say` prints the progress lines."""

from __future__ import annotations

import importlib.util
from argparse import Namespace
from collections.abc import Callable
from typing import Any

from . import bench, bench_report
from .backends import CHOICES, LIBRARIES, Backend, LibraryMissing, parse_device, select_backend
from .datasets import load_dataset
from .engines import Engine, as_engine, check_cluster, select_engine
from .errors import BackendError, MnistXpError, UsageError
from .nn import ARRAY_API_TAIL

Say = Callable[[str], None]


def check_options(options: Namespace) -> None:
    """bench's numbers and cluster flags, refused before anything is timed."""
    if (options.rows < 1 or options.repeats < 1 or options.warmup < 0
            or (options.accuracy_every is not None and options.accuracy_every < 1)):
        raise UsageError("--rows, --repeats and --accuracy-every must be at least 1, --warmup "
                         "at least 0")
    if options.chunk_size is not None and options.chunk_size < 1:
        raise UsageError("--chunk-size must be at least 1")
    if options.workers or options.scheduler:
        device = "cpu" if options.device.strip().lower() == "all" else options.device
        tls = (options.tls_ca, options.tls_cert, options.tls_key)
        for workers in options.workers or [None]:
            check_cluster(device, " ".join(options.backend), workers, options.scheduler,
                          options.dashboard, tls)
        if device.strip().lower().startswith("cuda") and \
                importlib.util.find_spec("dask_cuda") is None:
            raise BackendError('--backend dask --device cuda needs dask-cuda: pip install '
                               '"mnist-xp[dask-cuda]"')


def backends_to_time(device: str, libraries: list[str], say: Say) -> list[Backend]:
    """The backends to time: `auto` is NumPy on the CPU and CuPy on CUDA, `all` every library
    on every device it can use (backends.LIBRARIES); a pair that cannot run is skipped with a
    line saying why."""
    device = device.strip().lower()
    if device != "all":
        try:
            kind, _ = parse_device(device)
        except UsageError:
            kind = "auto"
        if kind == "auto":
            raise UsageError(f"bench --device {device}: use all (the CPU, and CUDA when "
                             f"usable), cpu, cuda or cuda:N")
    kinds = ["cpu", "cuda"] if device == "all" else [device]
    wanted = set(CHOICES) if "all" in libraries else set(libraries)
    backends, why_not = [], []
    for kind in kinds:
        base = kind.split(":")[0]
        allowed = [n for n in CHOICES if base in LIBRARIES[n].devices]
        names = ([{"cpu": "numpy", "cuda": "cupy"}[base]] if "auto" in wanted
                 else []) + [n for n in CHOICES if n in wanted and n in allowed]
        why_not += [LIBRARIES[n].why_not[base] for n in CHOICES if n in wanted
                    and n not in allowed and base in LIBRARIES[n].why_not]
        for library in dict.fromkeys(names):
            try:
                backend = select_backend(kind, library)
            except LibraryMissing as exc:
                say(f"bench: skipping {library} on {kind}: {exc}")
                continue
            except MnistXpError as exc:
                if device != "all" and len(wanted) == 1:
                    raise
                say(f"bench: skipping {library} on {kind}: {exc}")
                continue
            backends.append(backend)
    if not backends:
        raise UsageError(f"nothing to benchmark for --device {device} --backend "
                         f"{' '.join(libraries)}" + (f": {'; '.join(why_not)}" if why_not else ""))
    return backends


def torch_device(engine: Engine) -> str | None:
    """The torch device for the side-by-side step, or None when torch cannot run there."""
    try:
        import torch
    except ImportError:
        return None
    if engine.on_gpu:
        return engine.device_name if torch.cuda.is_available() else None
    return "cpu"


def cases_of(engine: Engine, options: Namespace, torch_ms: dict[tuple[Any, ...], float],
             say: Say, cases: list[dict[str, Any]]) -> None:
    """Time the cases of one engine into `cases`, one by one (so that a Ctrl-C keeps those
    done): every hidden size, TF32 mode (GPUs that have it) and tail (CuPy's fused and the
    reference), with the hand-written torch step beside them, timed once per device and size
    (torch_ms keeps them)."""
    backend = engine.backend
    say(f"device: {engine.name}")
    fused = engine.on_gpu and backend.tail.name != "array-api"  # timed against the reference
    tails = [backend.tail] + ([ARRAY_API_TAIL] if fused else [])
    tf32_modes = {"both": (False, True), "on": (True,), "off": (False,)}[options.tf32]
    modes = (False,)
    if engine.on_gpu and options.dtype == "float32":
        modes = tf32_modes if backend.supports_tf32 else (False,)
        if True in tf32_modes and not backend.supports_tf32:
            say(f"bench: no TF32 case on {engine.name}: TF32 needs compute capability 8.0 or "
                f"later")
    device = None if options.no_torch else torch_device(engine)
    for hidden in options.hidden:
        for tf32 in modes:
            key = (device, tuple(hidden), tf32)
            if device and key not in torch_ms:
                torch_ms[key] = bench.torch_step_ms(
                    device, hidden, options.dtype, tf32=tf32, rows=options.rows,
                    repeats=options.repeats, warmup=options.warmup)
            for tail in tails:
                case = bench.measure_case(
                    engine, hidden, options.dtype, tf32=tf32, tail=tail, rows=options.rows,
                    repeats=options.repeats, warmup=options.warmup,
                    chunk_size=options.chunk_size)
                if key in torch_ms:
                    case["torch_ms"] = torch_ms[key]
                tf32_mode = "" if case["tf32"] is None else f" tf32={case['tf32']}"
                say(f"  {bench_report.library(case)} {bench_report.hidden_label(hidden)} "
                    f"{options.dtype}{tf32_mode} {case['tail']}: {case['step_ms']:.2f} ms/step")
                cases.append(case)


def run(options: Namespace, say: Say) -> dict[str, Any]:
    """Time everything options ask for; the result bench_report reads."""
    check_options(options)
    if options.workers or options.scheduler:  # NumPy here, then each cluster in turn
        backends = [select_backend("cpu")]
        clusters = [{"workers": n, "dashboard": options.dashboard}
                    for n in options.workers or []]
        clusters += [{"scheduler": options.scheduler, "tls": (
            options.tls_ca, options.tls_cert, options.tls_key)}] if options.scheduler else []
    else:
        backends, clusters = backends_to_time(options.device, options.backend, say), []
    machine = bench.machine_description(backends)  # before a cluster sets BLAS threads to 1
    data = None
    if not options.no_accuracy:
        data = load_dataset(options.dataset or "mnist", options.data_dir, progress=True)
    torch_ms: dict[tuple[Any, ...], float] = {}  # the hand-written step, once per device
    cases: list[dict[str, Any]] = []
    cluster_names: list[str] = []
    accuracy: list[dict[str, Any]] = []
    interrupted = False
    try:
        for backend in backends:
            cases_of(as_engine(backend), options, torch_ms, say, cases)
        kind = "cpu" if options.device.strip().lower() in ("all", "cpu") else options.device
        for where in clusters:
            with select_engine(kind, "dask", **where) as engine:
                cluster_names.append(engine.name)
                cases_of(engine, options, torch_ms, say, cases)
        if data is not None:
            for backend in backends:
                for preset in options.accuracy_preset:
                    say(f"time to accuracy on {backend.device_name} ({preset} preset)...")
                    accuracy.append(bench.time_to_accuracy(data, backend, preset,
                                                           options.accuracy_every))
    except KeyboardInterrupt:  # what was timed so far is reported, not thrown away
        interrupted = True
    bench_report.add_speedups(cases)
    if cluster_names:
        machine["clusters"] = cluster_names
    return {"command": options.command_line, "rows": options.rows, "repeats": options.repeats,
            "warmup": options.warmup, "machine": machine, "cases": cases,
            "accuracy": accuracy, **({"interrupted": True} if interrupted else {})}

