"""The mnist-xp command: train, evaluate, info and bench. The only module that prints or exits.

Exit status: 0 ok, 1 runtime failure, 2 usage or environment, 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import logging
import math
import platform
import shlex
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from . import __version__
from .backends import LIBRARIES, Backend, parse_device, select_backend
from .checkpoint import Checkpoint, load_checkpoint
from .config import DTYPES, Config, resolve, resumed
from .data import Dataset, read_kaggle_csv
from .datasets import DATASETS, load_dataset, train_rows
from .errors import BackendError, Interrupted, MnistXpError, UsageError
from .files import atomic_write, check_output, write_or_keep
from .model import MLP, read_model_file
from .nn import HIDDEN_ACTIVATIONS, LOSSES, OUTPUTS
from .optim import OPTIMIZERS
from .plotting import pyplot
from .presets import PRESETS, get_preset
from .train import evaluate, train


def _hidden(text: str) -> tuple[int, ...]:
    """'256,128' -> (256, 128); '' or 'none' -> () (no hidden layer)."""
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 256,128, got {text!r}") from None


def _batch_size(text: str) -> int | str:
    if text == "full":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'full' or a number, got {text!r}") from None


def _add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto",
                        help="cpu, cuda, cuda:N or auto (CUDA when the backend sees a GPU; "
                             "default)")
    parser.add_argument("--backend", default="auto", choices=("auto", *LIBRARIES),
                        help="the array library: auto (NumPy on the CPU, CuPy on CUDA; default),"
                             " numpy, cupy, torch, jax (jitted) or dask")


def _add_cluster(parser: argparse.ArgumentParser, many: bool = False) -> None:
    parser.add_argument("--workers", type=int, metavar="N", nargs="+" if many else None,
                        help="with --backend dask: start a local Dask cluster of N workers of "
                             "one thread each and train on it" + (" (several counts: one "
                                                                  "cluster each)" if many else ""))
    parser.add_argument("--scheduler", metavar="ADDRESS",
                        help="with --backend dask: train on the running Dask cluster whose "
                             "scheduler is at ADDRESS, e.g. tcp://10.0.0.5:8786")


def _add_data(parser: argparse.ArgumentParser, default: str = "mnist") -> None:
    parser.add_argument("--dataset", choices=sorted(DATASETS), help=f"(default: {default})")
    parser.add_argument("--data-dir", type=Path, metavar="DIR",
                        help="read the four IDX files from this folder, no network "
                             "(default: $MNIST_XP_DATA_DIR or ~/.cache/mnist-xp, downloading "
                             "on first use)")


FROM_PRESET = "default: the preset's"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mnist-xp", description="Train a from-scratch MLP on MNIST with NumPy or CuPy.")
    parser.add_argument("--version", action="version", version=f"mnist-xp {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("train", help="train a network and report test accuracy")
    run.add_argument("--preset", choices=list(PRESETS),
                     help="starting configuration (default: best, about 4 minutes on a 2-core "
                          "CPU); every flag below without a default of its own overrides one "
                          "of its settings")
    run.add_argument("--hidden", type=_hidden, metavar="SIZES",
                     help=f"hidden layer sizes, e.g. 256,128, or none ({FROM_PRESET})")
    run.add_argument("--activation", choices=HIDDEN_ACTIVATIONS, help=FROM_PRESET)
    run.add_argument("--output", choices=OUTPUTS, help=FROM_PRESET)
    run.add_argument("--loss", choices=LOSSES, help=f"ce (cross-entropy) or mse ({FROM_PRESET})")
    run.add_argument("--optimizer", choices=list(OPTIMIZERS), help=FROM_PRESET)
    run.add_argument("--lr", type=float, help=f"learning rate ({FROM_PRESET})")
    run.add_argument("--momentum", type=float,
                     help="momentum coefficient, with --optimizer momentum (default: 0.9)")
    run.add_argument("--weight-decay", type=float,
                     help=f"L2 penalty on the weight matrices ({FROM_PRESET})")
    run.add_argument("--steps", type=int,
                     help="optimizer steps; on a preset counted in epochs, the run's length "
                          f"in steps instead ({FROM_PRESET})")
    run.add_argument("--epochs", type=int,
                     help=f"passes over the shuffled mini-batches, with --batch-size N "
                          f"({FROM_PRESET})")
    run.add_argument("--batch-size", type=_batch_size, metavar="full|N",
                     help="'full' (every training image each step) or N for shuffled "
                          f"mini-batches ({FROM_PRESET})")
    run.add_argument("--seed", type=int, help=FROM_PRESET)
    run.add_argument("--dtype", choices=DTYPES, help=FROM_PRESET)
    run.add_argument("--augment", type=int, metavar="K",
                     help="train on K copies of the training set, each but the first shifted "
                          "by up to 2 pixels (on a cluster, built on the workers; default: 1)")
    _add_device(run)
    _add_cluster(run)
    _add_data(run, "mnist, or the checkpoint's with --resume")
    run.add_argument("--eval-every", type=int, metavar="K",
                     help="evaluate train and test accuracy every K steps (default: steps/10)")
    run.add_argument("--log-every", type=int, default=10, metavar="K",
                     help="read the loss back every K steps (default: 10)")
    run.add_argument("--chunk-size", type=int, metavar="ROWS",
                     help="compute each step's gradient over chunks of ROWS rows "
                          "(default: 2048 on a CPU, one pass on a GPU)")
    run.add_argument("--metrics-out", type=Path, metavar="FILE", help="write metrics as JSON")
    run.add_argument("--save", type=Path, metavar="FILE.npz", help="save weights and config")
    run.add_argument("--checkpoint", type=Path, metavar="FILE.npz",
                     help="save weights, optimizer and RNG state and history here during training "
                          "(atomically) and on Ctrl-C")
    run.add_argument("--checkpoint-every", type=int, metavar="K",
                     help="checkpoint every K steps (default: at every evaluation)")
    run.add_argument("--resume", type=Path, metavar="FILE.npz",
                     help="continue the run saved in this checkpoint: flags may repeat its "
                          "settings, and --steps or --epochs extend it")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.set_defaults(func=cmd_train)

    check = commands.add_parser("evaluate", help="accuracy and confusion matrix of a saved model")
    check.add_argument("--model", type=Path, required=True, metavar="FILE.npz")
    check.add_argument("--csv", type=Path, metavar="FILE",
                       help="a labelled Kaggle CSV (label,pixel0,...) instead of the test set")
    _add_device(check)
    _add_data(check, "the one the model was trained on")
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
    _add_data(pictures, "the one the model was trained on")
    pictures.set_defaults(func=cmd_report)

    info = commands.add_parser("info", help="library versions and the CUDA devices CuPy sees")
    info.add_argument("--check", action="store_true",
                      help="train 5 steps on every installed backend and device and compare "
                           "the weights with NumPy's (exit 1 if any differs)")
    info.add_argument("--namespace", metavar="MODULE",
                      help="check this Array API namespace instead, e.g. array_api_strict")
    info.set_defaults(func=cmd_info)

    bench = commands.add_parser(
        "bench", help="CPU-vs-GPU report: step times, GFLOP/s, speedups, time to accuracy")
    bench.add_argument("--device", default="all",
                       help="all (the CPU, and CUDA when usable; default), cpu, cuda or cuda:N")
    bench.add_argument("--backend", nargs="+", default=["auto"],
                       choices=("auto", "all", *LIBRARIES), metavar="LIBRARY",
                       help="auto (NumPy on the CPU, CuPy on CUDA; default), all (every "
                            "installed library on every device it can use), or some of "
                            f"{', '.join(LIBRARIES)}")
    bench.add_argument("--hidden", type=_hidden, nargs="+", default=[(10,), (128,), (800,)],
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
                       help="rows per chunk (default: 2048 on a CPU, one pass on a GPU)")
    bench.add_argument("--no-torch", action="store_true",
                       help="skip the PyTorch side-by-side step even when torch is installed")
    bench.add_argument("--no-accuracy", action="store_true",
                       help="skip time to 97%%/98%% (it trains `best` on the real data)")
    bench.add_argument("--accuracy-every", type=int, default=5, metavar="K",
                       help="check test accuracy every K steps for time to accuracy (default: 5)")
    _add_cluster(bench, many=True)
    _add_data(bench)
    bench.add_argument("--json", type=Path, metavar="FILE", help="write the results as JSON")
    bench.add_argument("--markdown", type=Path, metavar="FILE", help="write the report there too")
    bench.add_argument("--plot", type=Path, metavar="FILE.png",
                       help="step time and speedup plot (needs the plot extra: matplotlib)")
    bench.set_defaults(func=cmd_bench)
    return parser


def _backend(args: argparse.Namespace) -> Backend:
    if getattr(args, "workers", None) or getattr(args, "scheduler", None):
        logging.getLogger("distributed").setLevel(logging.WARNING)  # a worker lost, not chatter
    backend = select_backend(args.device, args.backend, workers=getattr(args, "workers", None),
                             scheduler=getattr(args, "scheduler", None))
    note = f" ({backend.note})" if backend.note else ""
    print(f"device: {backend.name}{note}")
    return backend


def _write_json(path: Path, value: Any) -> None:
    text = json.dumps(value, indent=2) + "\n"
    atomic_write(path, lambda handle: handle.write(text.encode()))


class _Abort(BaseException):
    """A second Ctrl-C or SIGTERM: stop at once, without the checkpoint."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _signal_name(signum: int) -> str:
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[Callable[[], str | None]]:
    """The first Ctrl-C (SIGINT) or SIGTERM (what `timeout`, Slurm, Kubernetes and `docker
    stop` send) asks training to stop after the current step; it then writes the checkpoint
    and the command exits 128 + the signal's number (130, 143). A second one stops at once.
    Yields a function naming the signal that asked ("Ctrl-C", "SIGTERM"), or None."""
    requested: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        if requested:
            raise _Abort(signum)
        requested.append(signum)
        name = _signal_name(signum)
        print(f"\n{name}: stopping after this step ({name} again to stop at once)",
              file=sys.stderr)

    def asked() -> str | None:
        return _signal_name(requested[0]) if requested else None

    if threading.current_thread() is not threading.main_thread():
        yield asked
        return
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield asked
    finally:
        for s, action in previous.items():
            signal.signal(s, action)


# The Config fields the train command takes as flags (batch size is parsed on its own).
CONFIG_FLAGS = ("hidden", "activation", "output", "loss", "optimizer", "lr", "momentum",
                "weight_decay", "steps", "epochs", "seed", "dtype", "augment")


def _given(args: argparse.Namespace) -> dict[str, Any]:
    """The Config fields set on the command line."""
    given = {name: getattr(args, name) for name in CONFIG_FLAGS
             if getattr(args, name) is not None}
    if args.batch_size is not None:
        given["batch_size"] = None if args.batch_size == "full" else args.batch_size
    return given


def _check_run_flags(args: argparse.Namespace) -> None:
    """The flags that need no file: refused one by one, before anything is read."""
    for flag, value in (("--eval-every", args.eval_every), ("--log-every", args.log_every),
                        ("--chunk-size", args.chunk_size),
                        ("--checkpoint-every", args.checkpoint_every)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} {value}: must be at least 1")
    if args.checkpoint_every is not None and args.checkpoint is None:
        raise UsageError("--checkpoint-every needs --checkpoint FILE.npz")
    check_output(args.save, "--save", "model.npz")
    check_output(args.metrics_out, "--metrics-out", "metrics.json")
    check_output(args.checkpoint, "--checkpoint", "checkpoint.npz")
    _check_distinct([("--save", args.save), ("--metrics-out", args.metrics_out),
                     ("--checkpoint", args.checkpoint)])
    if args.save is not None and args.resume is not None and \
            Path(args.save).resolve() == Path(args.resume).resolve():
        raise UsageError(f"--save {args.save} is the checkpoint given to --resume: the model "
                         f"would replace it, and a model cannot be resumed; --checkpoint "
                         f"{args.resume} keeps it up to date instead")


def _check_distinct(outputs: list[tuple[str, Path | None]]) -> None:
    """Two outputs written to one file: the later write would replace the earlier one."""
    seen: dict[Path, str] = {}
    for flag, path in outputs:
        if path is None:
            continue
        where = Path(path).resolve()
        if where in seen:
            raise UsageError(f"{flag} {path} is also {seen[where]}'s file: give each output a "
                             f"file of its own")
        seen[where] = flag


def _run_config(args: argparse.Namespace) -> tuple[Config, Checkpoint | None, str]:
    """The run's configuration, the checkpoint it resumes (or None) and the dataset."""
    given = _given(args)
    if args.resume is None:
        config = resolve(get_preset(args.preset or "best"), given)
        return config, None, args.dataset or "mnist"
    checkpoint = load_checkpoint(args.resume)
    preset = get_preset(args.preset) if args.preset else None
    config = resumed(checkpoint.config, given, preset)
    dataset = checkpoint.dataset or args.dataset or "mnist"
    if args.dataset not in (None, dataset):
        raise UsageError(f"--dataset {args.dataset}: the checkpoint's run trains on {dataset}")
    return config, checkpoint, dataset


def _pace(seconds: float, steps_left: int) -> None:
    total = seconds * steps_left
    each = f"{seconds * 1e3:.3g} ms" if seconds < 1 else f"{seconds:.3g} s"
    left = f"{total / 60:.0f} min" if total >= 90 else f"{total:.0f} s"
    print(f"pace: {each} per step here; the {steps_left} steps left take about {left}, "
          f"evaluations not counted", flush=True)


def _print_traffic(traffic: Any, params: list[Any]) -> None:
    """On a cluster: what the steps moved over the network (backends.cluster.Traffic)."""
    size = sum(np.asarray(p).nbytes for p in params)
    moved = ("no data chunk moved between workers" if not traffic.chunks_moved else
             f"{traffic.chunks_moved} data chunk transfers between workers (is work stealing "
             f"on? distributed.scheduler.work-stealing: false keeps data in place)")
    print(f"network: {traffic.per_step / 1e3:.1f} kB per step, {traffic.per_step / size:.2f}x "
          f"the {size / 1e3:.1f} kB of parameters (out {traffic.out / 1e3:.0f} kB, back "
          f"{traffic.back / 1e3:.0f} kB, between workers {traffic.between / 1e3:.0f} kB over "
          f"{traffic.steps} steps{'' if traffic.direct else ', relayed by the scheduler'}); "
          f"{moved}")


def _keep(path: Path, flag: str, write: Callable[[BinaryIO], object]) -> str | None:
    """Write an output of a finished run; when that fails, say where it was kept instead."""
    try:
        kept = write_or_keep(path, write)
    except OSError as exc:
        return f"{flag} {path}: {exc.strerror or exc}, and it could not be kept anywhere"
    if kept is None:
        return None
    return f"{flag} {path} could not be written; it was kept at {kept}"


def cmd_train(args: argparse.Namespace) -> int:
    _check_run_flags(args)
    config, checkpoint, dataset = _run_config(args)
    rows = train_rows(dataset, args.data_dir)
    total = config.total_steps(rows)  # a batch larger than the training set is refused here
    if checkpoint is not None:
        if checkpoint.step >= total:
            raise UsageError(f"the checkpoint is already at step {checkpoint.step} of {total}: "
                             f"pass --steps above {checkpoint.step} to train further")
        print(f"resuming {args.resume} at step {checkpoint.step}: {config.describe()}")
    else:
        print(f"preset {args.preset or 'best'}: {config.describe()}, seed {config.seed}")
    with _backend(args) as backend:
        backend.check_dtype(config.dtype)
        data = load_dataset(dataset, args.data_dir, progress=not args.quiet)
        print(f"data: {data.name}, train {data.train_images.shape} test "
              f"{data.test_images.shape} uint8 -> {config.dtype} in [0, 1]")
        with _stop_on_signals() as stop_requested:
            try:
                model, history = train(
                    data, backend, config, eval_every=args.eval_every, log_every=args.log_every,
                    chunk_size=args.chunk_size, progress=not args.quiet,
                    checkpoint=args.checkpoint, checkpoint_every=args.checkpoint_every,
                    resume=checkpoint, should_stop=stop_requested, on_pace=_pace)
            except Interrupted as exc:
                signum = signal.SIGTERM if stop_requested() == "SIGTERM" else signal.SIGINT
                raise Interrupted(str(exc), 128 + signum) from None
        traffic = backend.traffic() if hasattr(backend, "traffic") else None
    last = history.last
    rate = history.steps_here / history.seconds_here if history.seconds_here > 0 else math.inf
    here = "" if history.first_step == 1 else f", {history.steps_here} of them in this run,"
    print(f"done: {history.steps} steps{here} in {history.seconds_here:.1f} s ({rate:.1f} "
          f"steps/s); train accuracy {last['train_accuracy']:.2%}, test accuracy "
          f"{last['test_accuracy']:.2%}, final loss {history.final_loss:.4f}")
    if traffic is not None:
        _print_traffic(traffic, model.params)
    problems = []
    if args.save:
        problem = _keep(args.save, "--save", model.npz_writer(extra={"history": history.records}))
        problems.append(problem)
        if problem is None:
            print(f"saved model to {args.save}")
    if args.metrics_out:
        text = json.dumps({
            "preset": args.preset, "config": config.to_dict(), "dataset": data.name,
            "backend": backend.library, "device": backend.device_name, "device_name": backend.name,
            "dtype": config.dtype, "steps": history.steps, "steps_this_run": history.steps_here,
            "batch_size": config.batch_size or "full", "seconds": history.seconds,
            "seconds_this_run": history.seconds_here, "steps_per_second": rate,
            "train_accuracy": last["train_accuracy"], "test_accuracy": last["test_accuracy"],
            "final_loss": history.final_loss, "history": history.records,
            **({"bytes_per_step": traffic.per_step, "traffic": traffic._asdict()}
               if traffic else {}),
            "mnist_xp_version": __version__}, indent=2) + "\n"
        problem = _keep(args.metrics_out, "--metrics-out", lambda h: h.write(text.encode()))
        problems.append(problem)
        if problem is None:
            print(f"wrote metrics to {args.metrics_out}")
    problems = [p for p in problems if p]
    if problems:
        raise MnistXpError("; ".join(problems))
    return 0


def format_confusion(confusion: np.ndarray) -> str:
    """The 10x10 matrix with a header row; rows are true digits, columns predictions."""
    width = max(5, len(str(int(confusion.max()))) + 1)
    lines = ["true\\pred" + "".join(f"{k:>{width}}" for k in range(confusion.shape[1]))]
    lines += [f"{k:>9}" + "".join(f"{v:>{width}}" for v in row) for k, row in enumerate(confusion)]
    return "\n".join(lines)


def _test_split(args: argparse.Namespace, model: MLP) -> Dataset:
    """The test split of the dataset the model was trained on (or --dataset, with a warning
    when it is another): the training files are not read."""
    dataset = args.dataset or model.dataset or "mnist"
    if model.dataset not in (None, dataset):
        warnings.warn(f"{args.model} was trained on {model.dataset}; using {dataset}, as "
                      f"--dataset asks", stacklevel=2)
    return load_dataset(dataset, args.data_dir, test_only=True)


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.csv is not None and (args.dataset or args.data_dir):
        raise UsageError("--csv evaluates the CSV's own images: --dataset and --data-dir are "
                         "not used with it")
    backend = _backend(args)
    model = MLP.load(args.model, backend)
    print(f"model: {args.model}: {model.config.describe()}, trained on "
          f"{model.dataset or 'an unrecorded dataset'}")
    if args.csv is not None:
        images, labels = read_kaggle_csv(args.csv)
        if labels is None:
            raise UsageError(f"{args.csv} has no label column, so there is nothing to score: "
                             f"mnist-xp predict --model {args.model} {args.csv} predicts its "
                             f"images (as Kaggle's submission)")
        source = str(args.csv)
    else:
        data = _test_split(args, model)
        images, labels, source = data.test_images, data.test_labels, f"{data.name} test set"
    result = evaluate(model, images, labels)
    print(f"accuracy on {source} ({len(labels)} images): {result.accuracy:.2%}")
    print(format_confusion(result.confusion))
    return 0


def _top3(probabilities: np.ndarray) -> list[tuple[int, float]]:
    order = np.argsort(-probabilities, kind="stable")[:3]
    return [(int(k), float(probabilities[k])) for k in order]


def _pillow(flag: str) -> None:
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise UsageError(f'{flag} needs Pillow: pip install "mnist-xp[image]"') from None


def cmd_predict(args: argparse.Namespace) -> int:
    from .images import read_digits

    csvs = [path for path in args.inputs if path.suffix.lower() == ".csv"]
    if csvs and len(args.inputs) > 1:
        raise UsageError("a Kaggle CSV is predicted on its own: pass one .csv and nothing else")
    if args.submission and not csvs:
        raise UsageError("--submission is for a Kaggle CSV input")
    check_output(args.submission, "--submission", "submission.csv")
    pictures = [p for p in args.inputs if p.suffix.lower() not in (".csv", ".npy")]
    if pictures:
        _pillow(f"reading {pictures[0]}")
    if args.show_preprocessed is not None:
        _pillow("--show-preprocessed")
        if args.show_preprocessed.exists() and not args.show_preprocessed.is_dir():
            raise UsageError(f"--show-preprocessed {args.show_preprocessed}: not a folder")
    backend = select_backend(args.device, args.backend)
    model = MLP.load(args.model, backend)
    classes = DATASETS[model.dataset].classes if model.dataset in DATASETS else None
    if pictures and model.dataset not in (None, "mnist"):
        warnings.warn(f"{args.model} was trained on {model.dataset}; pictures are prepared as "
                      f"handwritten digits (MNIST), which may not suit it", stacklevel=2)
    if args.show_preprocessed is not None:
        args.show_preprocessed.mkdir(parents=True, exist_ok=True)
    results, failed, written = [], 0, set()
    for path in args.inputs:
        try:
            digits, names = read_digits(path)
        except MnistXpError as exc:  # one line for this input; the others still run
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
            continue
        for name, p in zip(names, model.predict_proba(digits)):
            results.append({"input": name, "digit": int(np.argmax(p)), "top3": _top3(p)})
        if args.show_preprocessed is not None:
            _write_digit_pictures(args.show_preprocessed, path, digits, written)
    if csvs and results:
        lines = ["ImageId,Label"] + [f"{i},{r['digit']}" for i, r in enumerate(results, 1)]
        text = "\n".join(lines) + "\n"
        if args.submission:
            atomic_write(args.submission, lambda handle: handle.write(text.encode()))
            print(f"wrote {len(results)} predictions to {args.submission}", file=sys.stderr)
        elif not args.json:
            sys.stdout.write(text)
    name_of = (lambda k: f"{k} {classes[k]}") if classes else str
    if args.json:
        print(json.dumps([{"input": r["input"], "digit": r["digit"],
                           **({"class": classes[r["digit"]]} if classes else {}),
                           "top3": [{"digit": k, "probability": p} for k, p in r["top3"]]}
                          for r in results], indent=2))
    elif not csvs:
        for r in results:
            top = ", ".join(f"{name_of(k)}: {p:.1%}" for k, p in r["top3"])
            print(f"{r['input']}: {name_of(r['digit'])}  ({top})")
    return 1 if failed else 0


def _write_digit_pictures(folder: Path, source: Path, digits: np.ndarray,
                          written: set[str]) -> None:
    """The 28x28 images the network saw, as PNG, named after their input; a name an earlier
    input took gets a suffix (7.png, then 7_2.png), so that no picture overwrites another."""
    from PIL import Image

    for index, digit in enumerate(digits):
        stem = source.stem if len(digits) == 1 else f"{source.stem}-{index}"
        name, number = stem, 2
        while name in written:
            name, number = f"{stem}_{number}", number + 1
        written.add(name)
        picture = Image.fromarray(digit.reshape(28, 28))
        atomic_write(folder / f"{name}.png", lambda handle, p=picture: p.save(handle, "PNG"))


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    pyplot()  # a missing plot extra is a usage error, before any work
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out}: not a folder")
    saved = read_model_file(args.model)
    model = MLP.from_host(saved.config, saved.params, select_backend(args.device, args.backend),
                          saved.dataset)
    records = saved.meta.get("history") or []
    data = _test_split(args, model)
    for path in write_report(model, records, data, args.out, args.model):
        print(f"wrote {path}")
    return 0


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def cmd_info(args: argparse.Namespace) -> int:
    print(f"mnist-xp {__version__}, Python {platform.python_version()} on {platform.machine()}")
    for name in ("numpy", "array-api-compat", "tqdm", "array-api-strict", "torch", "jax",
                 "jaxlib", "dask"):
        print(f"{name}: {_version(name)}")
    cupy_dists = [d for d in ("cupy-cuda13x", "cupy-cuda12x", "cupy")
                  if _version(d) != "not installed"]
    print(f"cupy: {', '.join(f'{d} {_version(d)}' for d in cupy_dists) or 'not installed'}")
    if cupy_dists:
        index = 0
        while True:
            try:
                print(f"  cuda:{index}: {select_backend(f'cuda:{index}', 'cupy').name}")
            except MnistXpError as exc:
                if index == 0:
                    print(f"  no CUDA device: {exc}")
                break
            index += 1
    if args.check or args.namespace:
        return _self_check(args.namespace)
    return 0


def _self_check(namespace: str | None) -> int:
    """One line per backend: agrees with NumPy, differs, or why it did not run."""
    from . import selfcheck

    print("check: 5 training steps of two small networks (relu/softmax/adam, full batch; "
          "tanh/sigmoid/mse/momentum, mini-batches), float32, each backend against NumPy")
    if namespace:
        import importlib

        try:
            xp = importlib.import_module(namespace)
        except ImportError as exc:
            raise UsageError(f"--namespace {namespace}: cannot import it ({exc})") from None
        backend = Backend(xp)
        results = [(f"{backend.name}", selfcheck.compare_with_numpy(backend))]
    else:
        results = selfcheck.check_installed()
    failed = False
    for label, verdict in results:
        text = verdict if isinstance(verdict, str) else verdict.text
        failed = failed or (not isinstance(verdict, str) and not verdict.agrees)
        print(f"  {label}: {text}", flush=True)
    return 1 if failed else 0


# Where each library can run; `bench --backend all` tries every pair the --device allows.
BENCH_PAIRS = {"cpu": ("numpy", "torch", "jax", "dask"), "cuda": ("cupy", "torch", "jax")}


def _bench_backends(device: str, libraries: list[str]) -> list[Backend]:
    """The backends to time: `auto` is NumPy on the CPU and CuPy on CUDA, `all` every library
    on every device it can use; a pair that cannot run is skipped with a line saying why."""
    from .backends import IMPOSSIBLE, LibraryMissing, parse_device

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
    wanted = set(LIBRARIES) if "all" in libraries else set(libraries)
    backends, why_not = [], []
    for kind in kinds:
        base = kind.split(":")[0]
        allowed = BENCH_PAIRS[base]
        names = ([{"cpu": "numpy", "cuda": "cupy"}[base]] if "auto" in wanted
                 else []) + [n for n in LIBRARIES if n in wanted and n in allowed]
        why_not += [IMPOSSIBLE[n, base] for n in LIBRARIES if n in wanted and n not in allowed
                    and (n, base) in IMPOSSIBLE]
        for library in dict.fromkeys(names):
            try:
                backend = select_backend(kind, library)
            except LibraryMissing as exc:
                print(f"bench: skipping {library} on {kind}: {exc}")
                continue
            except MnistXpError as exc:
                if device != "all" and len(wanted) == 1:
                    raise
                print(f"bench: skipping {library} on {kind}: {exc}")
                continue
            backends.append(backend)
    if not backends:
        raise UsageError(f"nothing to benchmark for --device {device} --backend "
                         f"{' '.join(libraries)}" + (f": {'; '.join(why_not)}" if why_not else ""))
    return backends


def _torch_device(backend: Backend) -> str | None:
    """The torch device for the side-by-side step, or None when torch cannot run there."""
    try:
        import torch
    except ImportError:
        return None
    if backend.on_gpu:
        return backend.device_name if torch.cuda.is_available() else None
    return "cpu"


def cmd_bench(args: argparse.Namespace) -> int:
    from . import bench, bench_report

    if args.rows < 1 or args.repeats < 1 or args.warmup < 0 or args.accuracy_every < 1:
        raise UsageError("--rows, --repeats and --accuracy-every must be at least 1, --warmup "
                         "at least 0")
    if args.chunk_size is not None and args.chunk_size < 1:
        raise UsageError("--chunk-size must be at least 1")
    for flag, path, example in (("--json", args.json, "bench.json"),
                                ("--markdown", args.markdown, "bench.md"),
                                ("--plot", args.plot, "bench.png")):
        check_output(path, flag, example)
    if args.plot:
        pyplot()  # a missing plot extra is a usage error before the timings, not after
    if args.workers or args.scheduler:  # NumPy here, then each cluster in turn
        logging.getLogger("distributed").setLevel(logging.WARNING)
        if args.backend != ["dask"]:
            raise UsageError("--workers and --scheduler are for --backend dask")
        if args.device.strip().lower().startswith("cuda"):
            import importlib.util

            parse_device(args.device)
            if importlib.util.find_spec("dask_cuda") is None:
                raise BackendError('--backend dask --device cuda needs dask-cuda: pip install '
                                   '"mnist-xp[dask-cuda]"')
        backends = [select_backend("cpu")]
        clusters = [{"workers": n} for n in args.workers or []]
        clusters += [{"scheduler": args.scheduler}] if args.scheduler else []
    else:
        backends, clusters = _bench_backends(args.device, args.backend), []
    machine = bench.machine_description(backends)  # before a cluster sets BLAS threads to 1
    data = None
    if not args.no_accuracy:
        data = load_dataset(args.dataset or "mnist", args.data_dir, progress=True)
    torch_ms: dict[tuple[Any, ...], float] = {}  # the hand-written step, once per device
    cases, cluster_names = [], []
    for backend in backends:
        cases += _bench_backend(backend, args, torch_ms)
    for where in clusters:
        kind = "cpu" if args.device.strip().lower() in ("all", "cpu") else args.device
        with select_backend(kind, "dask", **where) as backend:
            cluster_names.append(backend.name)
            cases += _bench_backend(backend, args, torch_ms)
    bench_report.add_speedups(cases)
    accuracy = []
    if data is not None:
        for backend in backends:
            print(f"time to accuracy on {backend.device_name} (best preset)...", flush=True)
            accuracy.append(bench.time_to_accuracy(data, backend, eval_every=args.accuracy_every))
    if cluster_names:
        machine["clusters"] = cluster_names
    result = {"command": args.command_line,
              "rows": args.rows, "repeats": args.repeats, "warmup": args.warmup,
              "machine": machine, "cases": cases, "accuracy": accuracy}
    report = bench_report.markdown(result)
    print(report)
    if args.json:
        _write_json(args.json, result)
    if args.markdown:
        atomic_write(args.markdown, lambda handle: handle.write(report.encode()))
    if args.plot:
        bench_report.plot(result, args.plot)
    return 0


def _bench_backend(backend: Backend, args: argparse.Namespace,
                   torch_ms: dict[tuple[Any, ...], float]) -> list[dict[str, Any]]:
    """The cases of one backend: every hidden size, TF32 mode (GPUs that have it) and tail
    (CuPy's fused and the reference), with the hand-written torch step beside them."""
    from . import bench, bench_report

    print(f"device: {backend.name}", flush=True)
    tails = [backend.tail]
    if backend.tail.name != "array-api":
        from .nn import ARRAY_API_TAIL

        tails.append(ARRAY_API_TAIL)
    tf32_modes = {"both": (False, True), "on": (True,), "off": (False,)}[args.tf32]
    modes = (False,)
    if backend.on_gpu and args.dtype == "float32":
        modes = tf32_modes if backend.supports_tf32 else (False,)
        if True in tf32_modes and not backend.supports_tf32:
            print(f"bench: no TF32 case on {backend.name}: TF32 needs compute capability 8.0 "
                  f"or later")
    torch_device = None if args.no_torch else _torch_device(backend)
    cases = []
    for hidden in args.hidden:
        for tf32 in modes:
            key = (torch_device, tuple(hidden), tf32)
            if torch_device and key not in torch_ms:
                torch_ms[key] = bench.torch_step_ms(
                    torch_device, hidden, args.dtype, tf32=tf32, rows=args.rows,
                    repeats=args.repeats, warmup=args.warmup)
            for tail in tails:
                case = bench.measure_case(
                    backend, hidden, args.dtype, tf32=tf32, tail=tail, rows=args.rows,
                    repeats=args.repeats, warmup=args.warmup, chunk_size=args.chunk_size)
                if key in torch_ms:
                    case["torch_ms"] = torch_ms[key]
                print(f"  {bench_report.library(case)} {bench_report.hidden_label(hidden)} "
                      f"{args.dtype} tf32={case['tf32']} {case['tail']}: "
                      f"{case['step_ms']:.2f} ms/step", flush=True)
                cases.append(case)
    return cases


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
    except _Abort as exc:
        print(f"stopped at once by {_signal_name(exc.signum)}: nothing more was saved",
              file=sys.stderr)
        return 128 + exc.signum
