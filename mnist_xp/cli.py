"""The mnist-xp command: train, evaluate, predict, report, info and bench. It parses the
arguments, checks a run's settings through the one gate (settings.check_run), calls the work
and prints; the only module that prints or exits.

Exit status: 0 ok, 1 runtime failure, 2 usage or environment, 130 interrupted (143 by SIGTERM),
141 the reader of the output went away.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shlex
import signal
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .backends import CHOICES, Backend, select_backend
from .checkpoint import load_checkpoint
from .config import DTYPES, Config, flag, parse_hidden
from .data import read_kaggle_csv
from .datasets import DATASETS, load_dataset, load_test_split, train_rows
from .engines import Engine, select_engine
from .errors import Interrupted, MnistXpError, UsageError
from .files import (
    atomic_write,
    check_not_inputs,
    json_text,
    keep_output,
)
from .model import MLP
from .modelfile import read_model_file
from .plotting import pyplot
from .presets import PRESETS
from .settings import CHUNK_SIZE_DEFAULT, RunSettings, check_outputs, check_run
from .stopping import Abort, signal_name, stop_on_signals
from .train import evaluate, run_metrics, train
from .version import __version__


def _add_flags(parser: argparse.ArgumentParser, settings: type, names: tuple[str, ...] = ()
               ) -> None:
    """One flag per field (of those named, else all) of a settings dataclass, from the field's
    own help, choices and type."""
    for field in dataclasses.fields(settings):
        if names and field.name not in names:
            continue
        parser.add_argument(flag(field.name), **field.metadata["flag"])


def _add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto",
                        help="cpu, cuda, cuda:N or auto (CUDA when the backend sees a GPU; "
                             "default)")
    parser.add_argument("--backend", default="auto", choices=("auto", *CHOICES),
                        help="the array library: auto (NumPy on the CPU, CuPy on CUDA; default),"
                             " numpy, cupy, torch, jax (jitted) or dask")


def _add_cluster(parser: argparse.ArgumentParser, many: bool = False) -> None:
    parser.add_argument("--workers", type=int, metavar="N", nargs="+" if many else None,
                        help="with --backend dask: start a local Dask cluster of N workers of "
                             "one thread each and train on it" + (" (several counts: one "
                                                                  "cluster each)" if many else ""))
    parser.add_argument("--scheduler", metavar="ADDRESS",
                        help="with --backend dask: train on the running Dask cluster whose "
                             "scheduler is at ADDRESS, e.g. tls://10.0.0.5:8786 (tcp, tls, "
                             "inproc or ucx)")
    parser.add_argument("--dashboard", action="store_true",
                        help="with --workers: serve the cluster's dashboard (on loopback only)")
    for name, what in (("ca", "the certificate authority to trust a tls:// scheduler by"),
                       ("cert", "this client's certificate for a tls:// scheduler"),
                       ("key", "this client's private key for a tls:// scheduler")):
        parser.add_argument(f"--tls-{name}", type=Path, metavar="FILE", help=what)


def _add_data(parser: argparse.ArgumentParser, default: str = "mnist",
              files: str = "four IDX files") -> None:
    parser.add_argument("--dataset", choices=sorted(DATASETS), help=f"(default: {default})")
    parser.add_argument("--data-dir", type=Path, metavar="DIR",
                        help=f"read the dataset's {files} from this folder, no network "
                             f"(default: the cache, $MNIST_XP_DATA_DIR or "
                             f"~/.cache/mnist-xp/DATASET, downloading on first use)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mnist-xp",
        description="Train a from-scratch MLP on MNIST, written once against the Array API: "
                    "NumPy, CuPy, torch, JAX or Dask, on a CPU, a GPU or a Dask cluster.")
    parser.add_argument("--version", action="version", version=f"mnist-xp {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("train", help="train a network and report test accuracy")
    run.add_argument("--preset", choices=list(PRESETS),
                     help="starting configuration (default: best, about 4 minutes on a 2-core "
                          "CPU); every flag below without a default of its own overrides one "
                          "of its settings")
    _add_flags(run, Config)
    _add_device(run)
    _add_cluster(run)
    _add_data(run, "mnist, or the checkpoint's with --resume")
    _add_flags(run, RunSettings, ("eval_every", "log_every", "chunk_size"))
    run.add_argument("--metrics-out", type=Path, metavar="FILE", help="write metrics as JSON")
    run.add_argument("--save", type=Path, metavar="FILE.npz", help="save weights and config")
    _add_flags(run, RunSettings, ("checkpoint", "checkpoint_every", "resume"))
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.set_defaults(func=cmd_train)

    check = commands.add_parser("evaluate", help="accuracy and confusion matrix of a saved model")
    check.add_argument("--model", type=Path, required=True, metavar="FILE.npz")
    check.add_argument("--csv", type=Path, metavar="FILE",
                       help="a labelled Kaggle CSV (label,pixel0,...) instead of the test set")
    _add_device(check)
    _add_data(check, "the one the model was trained on", "two test IDX files")
    check.set_defaults(func=cmd_evaluate)

    guess = commands.add_parser(
        "predict", help="say which digit is in your own pictures, .npy arrays or a Kaggle CSV")
    guess.add_argument("inputs", nargs="+", type=Path, metavar="IMAGE",
                       help="PNG or JPEG pictures (preprocessed like MNIST), .npy arrays of "
                            "28x28 digits, or a Kaggle test.csv")
    guess.add_argument("--model", type=Path, required=True, metavar="FILE.npz")
    guess.add_argument("--json", action="store_true", help="print JSON for scripts")
    guess.add_argument("--show-preprocessed", type=Path, metavar="DIR",
                       help="write the 28x28 images fed to the network here, as PNG")
    guess.add_argument("--submission", type=Path, metavar="FILE.csv",
                       help="write Kaggle's ImageId,Label submission for a CSV input here "
                            "(default: print it)")
    _add_device(guess)
    guess.set_defaults(func=cmd_predict)

    pictures = commands.add_parser(
        "report", help="confusion matrix, training curves, mistakes and weights as pictures")
    pictures.add_argument("--model", type=Path, required=True, metavar="FILE.npz")
    pictures.add_argument("--out", type=Path, required=True, metavar="DIR",
                          help="folder for the PNGs and report.md (created if missing)")
    _add_device(pictures)
    _add_data(pictures, "the one the model was trained on", "two test IDX files")
    pictures.set_defaults(func=cmd_report)

    info = commands.add_parser("info", help="library versions and the CUDA devices CuPy sees")
    info.add_argument("--check", action="store_true",
                      help="train 5 steps on every installed backend and device and compare "
                           "the weights with NumPy's (exit 1 if any differs)")
    info.add_argument("--namespace", metavar="MODULE",
                      help="check this Array API namespace instead, e.g. array_api_strict")
    info.set_defaults(func=cmd_info)

    bench = commands.add_parser(
        "bench", help="step times, GFLOP/s and speedups of every backend and device, the "
                      "hand-written torch step beside them, time to accuracy")
    bench.add_argument("--device", default="all",
                       help="all (the CPU, and CUDA when usable; default), cpu, cuda or cuda:N")
    bench.add_argument("--backend", nargs="+", default=["auto"],
                       choices=("auto", "all", *CHOICES), metavar="LIBRARY",
                       help="auto (NumPy on the CPU, CuPy on CUDA; default), all (every "
                            "installed library on every device it can use), or some of "
                            f"{', '.join(CHOICES)}")
    bench.add_argument("--hidden", type=parse_hidden, nargs="+", default=[(10,), (128,), (800,)],
                       metavar="SIZES", help="networks to time, each a hidden-size list like 128 "
                                             "or 1024,256 (default: 10 128 800)")
    bench.add_argument("--dtype", choices=DTYPES, default="float32")
    bench.add_argument("--tf32", choices=("both", "on", "off"), default="both",
                       help="float32 matmuls on a GPU with TF32 tensor cores, without, or both "
                            "(default: both)")
    bench.add_argument("--rows", type=int, default=60_000, help="batch rows (default: 60000)")
    bench.add_argument("--repeats", type=int, default=20, help="timed steps (default: 20)")
    bench.add_argument("--warmup", type=int, default=3, help="untimed steps first (default: 3)")
    bench.add_argument("--chunk-size", type=int, metavar="ROWS",
                       help=f"rows per chunk (default: {CHUNK_SIZE_DEFAULT})")
    bench.add_argument("--no-torch", action="store_true",
                       help="skip the PyTorch side-by-side step even when torch is installed")
    bench.add_argument("--no-accuracy", action="store_true",
                       help="skip time to accuracy (it trains presets on the real data)")
    bench.add_argument("--accuracy-preset", nargs="+", default=["best"], choices=list(PRESETS),
                       metavar="PRESET", help="the presets time to accuracy trains: best "
                       "(the default run; to 97%% and 98%%) and record (to 98%%, 99%% and "
                       "99.4%%: about 7 minutes on 2 CPU cores) or any other (default: best)")
    bench.add_argument("--accuracy-every", type=int, metavar="K",
                       help="check test accuracy every K steps for time to accuracy (default: 5 "
                            "in full batch, once per epoch with mini-batches)")
    _add_cluster(bench, many=True)
    _add_data(bench)
    bench.add_argument("--json", type=Path, metavar="FILE", help="write the results as JSON")
    bench.add_argument("--markdown", type=Path, metavar="FILE", help="write the report there too")
    bench.add_argument("--plot", type=Path, metavar="FILE.png",
                       help="step time and speedup plot (needs the plot extra: matplotlib)")
    bench.set_defaults(func=cmd_bench)
    return parser


def _engine(args: argparse.Namespace) -> Engine:
    """The engine for --device, --backend and the cluster flags, said in one line."""
    workers, scheduler = getattr(args, "workers", None), getattr(args, "scheduler", None)
    engine = select_engine(args.device, args.backend, workers=workers, scheduler=scheduler,
                           dashboard=getattr(args, "dashboard", False), tls=_tls(args))
    note = f" ({engine.note})" if engine.note else ""
    print(f"device: {engine.name}{note}")
    return engine


def _tls(args: argparse.Namespace) -> tuple[Path | None, ...]:
    return tuple(getattr(args, f"tls_{name}", None) for name in ("ca", "cert", "key"))


def _backend(args: argparse.Namespace) -> Backend:
    """The array backend for --device and --backend (evaluate, predict, report)."""
    return _engine(args).backend


def _given(args: argparse.Namespace) -> dict[str, Any]:
    """The Config fields set on the command line ('full' batches are None)."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config)
             if getattr(args, f.name) is not None}
    if given.get("batch_size") == "full":
        given["batch_size"] = None
    return given


def _run_settings(args: argparse.Namespace) -> RunSettings:
    """The run's settings through the one gate, before any data loads."""
    check_outputs(args.save, args.metrics_out, args.checkpoint, args.resume)
    return check_run(args.preset, _given(args), train_rows=lambda name: train_rows(
        name, args.data_dir), resume=load_checkpoint(args.resume) if args.resume else None,
        dataset=args.dataset, eval_every=args.eval_every, log_every=args.log_every,
        chunk_size=args.chunk_size, checkpoint=args.checkpoint,
        checkpoint_every=args.checkpoint_every)


def cmd_train(args: argparse.Namespace) -> int:
    settings = _run_settings(args)
    config = settings.config
    if settings.resume is not None:
        print(f"resuming {args.resume} at step {settings.resume.step}: {config.describe()}")
    else:
        print(f"preset {args.preset or 'best'}: {config.describe()}, seed {config.seed}")
    with _engine(args) as engine:
        engine.backend.check_dtype(config.dtype)
        data = load_dataset(settings.dataset, args.data_dir, progress=not args.quiet)
        print(f"data: {data.name}, train {data.train_images.shape} test "
              f"{data.test_images.shape} uint8 -> {config.dtype} in [0, 1]")
        with stop_on_signals() as stop_requested:
            try:
                model, history = train(data, engine, settings=settings, progress=not args.quiet,
                                       should_stop=stop_requested,
                                       on_pace=lambda e: print(e.line(), flush=True))
            except Interrupted as exc:
                signum = signal.SIGTERM if stop_requested() == "SIGTERM" else signal.SIGINT
                raise Interrupted(str(exc), 128 + signum) from None
        traffic = engine.traffic()
    print(history.summary())
    if traffic is not None:
        print(traffic.describe(sum(np.asarray(p).nbytes for p in model.params)))
    problems = []
    if args.save:
        problem = keep_output(args.save, "--save",
                              model.npz_writer(extra={"history": history.records}))
        problems.append(problem)
        if problem is None:
            print(f"saved model to {args.save}")
    if args.metrics_out:
        text = json_text(run_metrics(args.preset, settings, data.name, engine, history,
                                     traffic))
        problem = keep_output(args.metrics_out, "--metrics-out", lambda h: h.write(text.encode()))
        problems.append(problem)
        if problem is None:
            print(f"wrote metrics to {args.metrics_out}")
    problems = [p for p in [*problems, history.checkpoint_kept] if p]
    if problems:
        raise MnistXpError("; ".join(problems))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.csv is not None and (args.dataset or args.data_dir):
        raise UsageError("--csv evaluates the CSV's own images: --dataset and --data-dir are "
                         "not used with it")
    backend = _backend(args)
    saved = read_model_file(args.model)
    model = MLP.from_host(saved.config, saved.params, backend, saved.dataset)
    stopped = (f" (a checkpoint after step {saved.meta.get('step')} of that run)"
               if saved.meta.get("kind") == "checkpoint" else "")
    print(f"model: {args.model}: {model.config.describe()}{stopped}, trained on "
          f"{model.dataset or 'an unrecorded dataset'}")
    if args.csv is not None:
        images, labels = read_kaggle_csv(args.csv)
        if labels is None:
            raise UsageError(f"{args.csv} has no label column, so there is nothing to score: "
                             f"mnist-xp predict --model {args.model} {args.csv} predicts its "
                             f"images (as Kaggle's submission)")
        source = str(args.csv)
    else:
        data = load_test_split(model.dataset, args.dataset, args.data_dir, args.model)
        images, labels, source = data.test_images, data.test_labels, f"{data.name} test set"
    result = evaluate(model, images, labels)
    print(f"accuracy on {source} ({len(labels)} images): {result.accuracy:.2%}")
    print(result.table())
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .predict import as_json, check_inputs, predict_inputs, submission

    csvs, pictures = check_inputs(args.inputs, args.model, args.submission,
                                  args.show_preprocessed)
    backend = select_backend(args.device, args.backend)
    model = MLP.load(args.model, backend)
    classes = DATASETS[model.dataset].classes if model.dataset in DATASETS else None
    if pictures and model.dataset not in (None, "mnist"):
        warnings.warn(f"{args.model} was trained on {model.dataset}; pictures are prepared as "
                      f"handwritten digits (MNIST), which may not suit it", stacklevel=2)
    if args.show_preprocessed is not None:
        args.show_preprocessed.mkdir(parents=True, exist_ok=True)
    failures: list[MnistXpError] = []

    def failed(exc: MnistXpError) -> None:  # one line for this input; the others still run
        print(f"error: {exc}", file=sys.stderr)
        failures.append(exc)

    results = predict_inputs(model, args.inputs, failed, args.show_preprocessed)
    if csvs and results:
        text = submission(results)
        if args.submission:
            atomic_write(args.submission, lambda handle: handle.write(text.encode()))
            print(f"wrote {len(results)} predictions to {args.submission}", file=sys.stderr)
        elif not args.json:
            sys.stdout.write(text)
    name_of = (lambda k: f"{k} {classes[k]}") if classes else str
    if args.json:
        print(json_text(as_json(results, classes)), end="")
    elif not csvs:
        for r in results:
            top = ", ".join(f"{name_of(k)}: {p:.1%}" for k, p in r["top3"])
            print(f"{r['input']}: {name_of(r['digit'])}  ({top})")
    return 1 if failures else 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import FILES, write_report

    pyplot()  # a missing plot extra is a usage error, before any work
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out}: not a folder")
    check_not_inputs([(f"--out {args.out}'s {name}", args.out / name) for name in FILES],
                     [("--model", args.model)])
    saved = read_model_file(args.model)
    model = MLP.from_host(saved.config, saved.params, select_backend(args.device, args.backend),
                          saved.dataset)
    records = saved.meta.get("history") or []
    data = load_test_split(model.dataset, args.dataset, args.data_dir, args.model)
    for path in write_report(model, records, data, args.out, args.model):
        print(f"wrote {path}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from . import selfcheck

    print(f"mnist-xp {__version__}, Python {platform.python_version()} on {platform.machine()}")
    for name, version in selfcheck.versions():
        print(f"{name}: {version}")
    for line in selfcheck.cuda_devices():
        print(f"  {line}")
    if not (args.check or args.namespace):
        return 0
    print(f"check: {selfcheck.WHAT}")
    failed = False
    for label, verdict in selfcheck.check(args.namespace):
        text = verdict if isinstance(verdict, str) else verdict.text
        failed = failed or (not isinstance(verdict, str) and not verdict.agrees)
        print(f"  {label}: {text}", flush=True)
    return 1 if failed else 0


def cmd_bench(args: argparse.Namespace) -> int:
    from . import bench_report, benchmark

    benchmark.check_options(args)
    bench_report.check_outputs(args.json, args.markdown, args.plot)
    result = benchmark.run(args, say=lambda line: print(line, flush=True))
    print(bench_report.write(result, args.json, args.markdown, args.plot))
    if result.get("interrupted"):
        written = [str(p) for p in (args.json, args.markdown, args.plot) if p]
        print(f"interrupted by Ctrl-C: the report above holds the {len(result['cases'])} "
              f"cases timed before it" + (f", written to {', '.join(written)}" if written
                                           else ""), file=sys.stderr)
        return 130
    return 0


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.command_line = shlex.join(["mnist-xp", *argv])
    warnings.showwarning = _show_warning
    try:
        return args.func(args)
    except MnistXpError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # the reader went away (| head): end quietly, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error at exit
        return 128 + signal.SIGPIPE
    except OSError as exc:  # disk full, permissions, ...: the OS's own words, in one line
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except MemoryError:
        print("error: out of memory: try a smaller --chunk-size, --hidden or --batch-size",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Abort as exc:
        print(f"stopped at once by {signal_name(exc.signum)}: nothing more was saved",
              file=sys.stderr)
        return 128 + exc.signum
