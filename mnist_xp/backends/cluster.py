"""Full-batch training on a Dask cluster (dask.distributed): the data stays on the workers, only
parameters and gradients cross the network.

A full-batch gradient is a sum over rows, so it splits across machines with no approximation:

- the training and test sets are split into row chunks, built once on the workers (read from
  the IDX files where the workers can reach them, else shipped from here in each chunk's
  recipe) and kept there;
- each step sends the parameters to each worker and runs one task on each, which computes
  the loss and gradient of each chunk it holds with the very nn functions every backend uses
  (NumPy on CPU workers, CuPy on GPU workers under dask-cuda) and sums them;
- with more than FAN_IN workers, those partial sums are added FAN_IN at a time on the
  workers, in a tree, so that at most FAN_IN of them come back here;
- here, their sum is the gradient, and the optimizer updates the parameters once, with
  optim's NumPy code.

Parameters go out and partial sums come back directly between this client and each worker
(not through the scheduler, which would relay every byte a second time, nor replicated from
worker to worker): 2·workers·P bytes per step for parameters of P bytes on up to FAN_IN
workers, whatever the number of rows (beyond, the tree moves the rest between workers).
Where the workers cannot be reached directly (a cluster behind its scheduler), the
scheduler relays them, and the count says so. A chunk whose worker dies is built again
elsewhere from its recipe (the files, or the rows shipped in it) and the run goes on.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
import warnings
from collections.abc import Iterator
from typing import Any, NamedTuple

import array_api_compat.numpy as numpy_xp
import dask
import numpy as np
from distributed import Client, Future, LocalCluster
from distributed.diagnostics.plugin import WorkerPlugin

from .. import augment, nn
from ..data import CLASSES, PIXELS
from ..errors import BackendError, LostWork
from ..optim import State, make_optimizer
from .base import Backend

DASK_HINT = 'pip install "mnist-xp[dask]"'
CHUNKS_PER_WORKER = 4
FAN_IN = 4  # partial sums added at a time in the tree on the workers (and at most back here)
CONNECT_TIMEOUT_S = 20
RETRIES = 3  # attempts at a step or an evaluation when a worker leaves during it
RETRY_WAIT_S = 1.0


class WorkerLeft(OSError):
    """A worker left in the middle of a step (retrying() tries the step again without it)."""


class ClusterError(LostWork):
    """The cluster lost work it could not redo: the run stops, checkpoints intact (exit 1)."""


# --- what runs on the workers ------------------------------------------------------------------

class Recipe(NamedTuple):
    """How a worker builds one chunk: rows start..stop of copy `copy` of a split, read from the
    dataset's files in `folder`, or from `images`/`labels` shipped with the recipe."""

    start: int
    stop: int
    copy: int
    seed: int
    dtype: str
    gpu: bool
    dataset: str | None = None
    folder: str | None = None
    split: str = "train"
    images: np.ndarray | None = None  # the split's rows start..stop, when not read from files
    labels: np.ndarray | None = None
    base_rows: int = 0  # rows in the whole split (the augmentation's shifts are drawn for all)


class Chunk(NamedTuple):
    """A chunk on its worker: X (r, 784) floats in [0, 1], labels y (r,), one-hot Y (r, 10)."""

    X: Any
    y: Any
    Y: Any


@functools.lru_cache(maxsize=2)
def _read_split(dataset: str, folder: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A split read on a worker, once per worker process (the files' folder must be reachable
    from it, e.g. shared)."""
    from ..datasets import load_dataset

    data = load_dataset(dataset, folder, test_only=split == "test")
    if split == "test":
        return data.test_images, data.test_labels
    return data.train_images, data.train_labels


def build_chunk(recipe: Recipe) -> Chunk:
    """Runs on a worker: the chunk's rows, shifted (copy > 0), scaled, one-hot labels."""
    if recipe.images is None:
        images, labels = _read_split(recipe.dataset, recipe.folder, recipe.split)
        base_rows = len(images)
        images, labels = images[recipe.start:recipe.stop], labels[recipe.start:recipe.stop]
    else:
        images, labels, base_rows = recipe.images, recipe.labels, recipe.base_rows
    if recipe.copy:
        moves = augment.shifts(base_rows, recipe.copy, recipe.seed)[recipe.start:recipe.stop]
        images = augment.shifted(images, moves)
    X = images.reshape(-1, PIXELS).astype(recipe.dtype) / np.asarray(255, recipe.dtype)
    y = labels.astype(np.int64)
    Y = (y[:, None] == np.arange(CLASSES)).astype(recipe.dtype)
    if recipe.gpu:
        import cupy

        return Chunk(cupy.asarray(X), cupy.asarray(y), cupy.asarray(Y))
    return Chunk(X, y, Y)


def chunk_rows_of(chunk: Chunk) -> int:
    return int(chunk.y.shape[0])


class Settings(NamedTuple):
    """What a chunk's gradient depends on besides the parameters and the chunk."""

    activation: str
    output: str
    loss: str
    inner_chunk: int | None  # rows per pass on the worker (cache-sized on a CPU)


def _on_worker(chunk: Chunk, params: tuple[np.ndarray, ...]) -> tuple[Any, list[Any]]:
    xp = numpy_xp
    if not isinstance(chunk.X, np.ndarray):  # CuPy on a GPU worker
        import array_api_compat.cupy as xp
    return xp, [xp.asarray(p) for p in params]


def _to_host(array: Any) -> np.ndarray:
    return array if isinstance(array, np.ndarray) else array.get()


def chunk_gradient(params: tuple[np.ndarray, ...], chunk: Chunk, settings: Settings,
                   batch_rows: int, with_loss: bool, rows: np.ndarray | None
                   ) -> tuple[float | None, list[np.ndarray]]:
    """Runs on a worker: this chunk's share of the batch's loss and gradient (the 1/m of a batch
    of batch_rows rows inside), over its rows or the `rows` of it that the batch takes."""
    xp, device_params = _on_worker(chunk, params)
    X, Y = chunk.X, chunk.Y
    if rows is not None:
        X, Y = X[rows], Y[rows]
    loss, grads = nn.loss_and_gradients(device_params, X, Y, settings.activation,
                                        settings.output, settings.loss, settings.inner_chunk,
                                        with_loss, rows=batch_rows)
    return (float(loss) if with_loss else None), [_to_host(g) for g in grads]


def add_up(*parts: tuple[float | None, list[np.ndarray]]
           ) -> tuple[float | None, list[np.ndarray]]:
    """The sum of partial losses and gradients."""
    losses = [loss for loss, _ in parts]
    loss = None if losses[0] is None else float(sum(losses))
    return loss, [functools.reduce(np.add, grads) for grads in zip(*(g for _, g in parts))]


def worker_gradient(params: tuple[np.ndarray, ...], settings: Settings, batch_rows: int,
                    with_loss: bool, rows: list[np.ndarray | None], *chunks: Chunk
                    ) -> tuple[float | None, list[np.ndarray]]:
    """Runs on a worker: the sum of its chunks' shares of the batch's loss and gradient, so
    that one partial sum per worker comes back (and one task per worker keeps the scheduling
    to one hop a step)."""
    return add_up(*(chunk_gradient(params, chunk, settings, batch_rows, with_loss, part)
                    for chunk, part in zip(chunks, rows)))


def worker_hits(params: tuple[np.ndarray, ...], activation: str, *chunks: Chunk) -> float:
    """Runs on a worker: how many of its chunks' rows the network gets right."""
    total = 0.0
    for chunk in chunks:
        _, device_params = _on_worker(chunk, params)
        total += float(nn.hit_count(nn.logits(device_params, chunk.X, activation), chunk.y))
    return total


class OwnProcessGroup(WorkerPlugin):
    """Moves each worker process of a LocalCluster started here into a process group of its
    own, so that a signal sent to this command's group (Ctrl-C in a terminal, `timeout`)
    reaches only the command, which stops after its step and writes its checkpoint; the
    workers are closed after that, by their nannies. Restarted workers get it too."""

    name = "mnist-xp-own-process-group"

    def setup(self, worker: Any) -> None:
        import os

        os.setpgid(0, 0)


# --- here: the split, the step, the accuracy -----------------------------------------------

class ClusterSplit:
    """A split as chunk futures on the workers, with the global row each chunk starts at."""

    def __init__(self, backend: ClusterBackend, chunks: list[Future], sizes: list[int],
                 read_on_workers: bool) -> None:
        self.backend, self.chunks, self.read_on_workers = backend, chunks, read_on_workers
        self.starts = np.concatenate([[0], np.cumsum(sizes)])
        self.rows = int(self.starts[-1])

    def take(self, rows: np.ndarray) -> ClusterBatch:
        """The batch of these global rows, as each chunk's local rows."""
        rows = np.asarray(rows)
        owner = np.searchsorted(self.starts, rows, side="right") - 1
        local = {int(i): rows[owner == i] - self.starts[i] for i in np.unique(owner)}
        return ClusterBatch(self, local, len(rows))


class ClusterBatch(NamedTuple):
    """Some rows of a ClusterSplit: chunk index -> its rows in the batch."""

    split: ClusterSplit
    local: dict[int, np.ndarray]
    rows: int


class ClusterStep:
    """One optimizer step on the cluster (see the module's docstring)."""

    def __init__(self, backend: ClusterBackend, config: Any, inner_chunk: int | None) -> None:
        self.backend, self.config = backend, config
        self.optimizer = make_optimizer(config.optimizer, config.lr, config.weight_decay,
                                        config.momentum)
        self.settings = Settings(config.activation, config.output, config.loss, inner_chunk)
        self.tail = nn.ARRAY_API_TAIL
        self.traces = 0

    def initial_state(self, params: list[Any], t: int = 0,
                      host_state: dict[str, list[np.ndarray]] | None = None) -> State:
        state = self.optimizer.init(params)
        if host_state is not None:
            state = {"t": np.asarray(t, dtype=self.config.dtype),
                     **{name: [np.array(a) for a in arrays] for name, arrays in host_state.items()}}
        return state

    def __call__(self, params: list[np.ndarray], state: State, batch: Any,
                 with_loss: bool = False) -> tuple[list[np.ndarray], State, Any]:
        self.traces += 1
        split, local = (batch.split, batch.local) if isinstance(batch, ClusterBatch) else (
            batch, None)
        loss, grads = self.backend.retrying(self.backend.gradient, params, split, local,
                                            batch.rows, self.settings, with_loss)
        params, state = self.optimizer.update(params, grads, state)
        return params, state, loss


class ClusterAccuracy:
    def __init__(self, backend: ClusterBackend, activation: str) -> None:
        self.backend, self.activation = backend, activation

    def __call__(self, params: list[np.ndarray], split: ClusterSplit) -> float:
        return self.backend.retrying(self.backend.hits, params, split, self.activation
                                     ) / split.rows


class Traffic(NamedTuple):
    """Bytes the steps moved so far: parameters out, partial sums back (every hop: twice where
    the scheduler relays them), and between workers (from the workers' own transfer logs,
    evaluations included), with any data chunk that moved between workers."""

    out: int
    back: int
    between: int
    chunks_moved: int
    steps: int
    direct: bool = True  # client <-> workers directly, not through the scheduler

    @property
    def per_step(self) -> float:
        return (self.out + self.back + self.between) / max(self.steps, 1)


class ClusterBackend(Backend):
    """Parameters here (NumPy), data on the workers of a dask.distributed cluster."""

    data_is_chunked = True

    def __init__(self, client: Client, cluster: LocalCluster | None = None, gpu: bool = False,
                 name: str = "", note: str = "") -> None:
        self.client, self.cluster, self.gpu = client, cluster, gpu
        self._out = self._back = self._steps = 0
        self._keys = 0
        super().__init__(numpy_xp, "cpu", name or self.describe(), note)
        self.direct = self._reaches_workers()  # else the scheduler relays parameters and sums

    def _reaches_workers(self) -> bool:
        """Whether this client can send to every worker directly (not so for a cluster whose
        workers are reachable only from its scheduler, e.g. behind a Kubernetes service)."""
        try:
            for worker in self.workers:
                self.client.scatter(np.zeros(1), workers=[worker], direct=True, hash=False,
                                    timeout=CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError):
            return False
        return True

    def describe(self) -> str:
        workers = self.client.scheduler_info()["workers"]
        threads = sorted({w.get("nthreads", 0) for w in workers.values()})
        where = "a LocalCluster started here" if self.cluster is not None else "connected"
        kind = ("GPU worker" if self.gpu else "worker") + ("s" if len(workers) != 1 else "")
        return (f"dask {dask.__version__} cluster at {self.client.scheduler.address} "
                f"({where}): {len(workers)} {kind} × {'/'.join(map(str, threads))} "
                f"thread{'s' if max(threads, default=1) > 1 else ''}")

    @property
    def library(self) -> str:
        return "dask"

    @property
    def device_name(self) -> str:
        return "cuda" if self.gpu else "cpu"

    @contextlib.contextmanager
    def peak_memory(self) -> Iterator[list[int | None]]:
        """None: the data and the arithmetic are on the workers, not here."""
        yield [None]

    @property
    def workers(self) -> list[str]:
        return list(self.client.scheduler_info()["workers"])

    @property
    def default_chunk_rows(self) -> int | None:
        """None: a split is cut into CHUNKS_PER_WORKER chunks per worker."""
        return None

    def close(self) -> None:
        """Disconnect, and shut down the LocalCluster this backend started."""
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    # the data

    def to_device(self, images: np.ndarray, labels: np.ndarray, dtype: str,
                  chunk_rows: int | None = None, *, copies: int = 1, seed: int = 0,
                  origin: Any = None) -> ClusterSplit:
        """The split in row chunks built on the workers (round robin), copies included: read
        there from the split's files when every worker can, else shipped once from here."""
        workers = self.workers
        n = len(labels)
        total = n * copies
        per_chunk = chunk_rows or math.ceil(total / (CHUNKS_PER_WORKER * len(workers)))
        per_chunk = max(1, min(per_chunk, n))
        readable = origin is not None and origin.folder is not None and self._can_read(origin)
        chunks, sizes = [], []
        for copy in range(copies):
            for start in range(0, n, per_chunk):
                stop = min(start + per_chunk, n)
                recipe = Recipe(start, stop, copy, seed, dtype, self.gpu)
                if readable:
                    recipe = recipe._replace(dataset=origin.dataset, folder=origin.folder,
                                             split=origin.split)
                else:
                    recipe = recipe._replace(images=images[start:stop], labels=labels[start:stop],
                                             base_rows=n)
                worker = workers[len(chunks) % len(workers)]
                self._keys += 1
                with warnings.catch_warnings():  # the shipped rows travel once, in the recipe
                    warnings.simplefilter("ignore", UserWarning)
                    chunks.append(self.client.submit(
                        build_chunk, recipe, key=f"mnist-xp-chunk-{self._keys}",
                        workers=[worker], allow_other_workers=True, pure=False))
                sizes.append(stop - start)
        with self.faults():  # built, or the recipe's error here
            self.client.gather(self.client.map(chunk_rows_of, chunks, pure=False))
        return ClusterSplit(self, chunks, sizes, readable)

    def _can_read(self, origin: Any) -> bool:
        """Whether every worker sees the split's files (a folder shared with them)."""
        from pathlib import Path

        def check(folder: str) -> bool:
            return Path(folder).is_dir()

        try:
            return all(self.client.run(check, origin.folder).values())
        except Exception:  # a worker that cannot even run the check: ship the data
            return False

    # the step and the accuracy

    def train_step(self, config: Any, chunk_size: int | None = None, tail: Any = None
                   ) -> ClusterStep:
        return ClusterStep(self, config, None if self.gpu else 2048)

    def accuracy(self, activation: str, chunk_size: int | None = None) -> ClusterAccuracy:
        return ClusterAccuracy(self, activation)

    def _broadcast(self, params: list[np.ndarray], step: bool) -> dict[str, Future]:
        """The parameters, one copy sent to each worker (counted when for a step): directly,
        or through the scheduler where a worker cannot be reached from here."""
        host = tuple(np.asarray(p) for p in params)
        copies = {}
        for worker in self.workers:
            try:
                copies[worker] = self.client.scatter(host, workers=[worker], direct=self.direct,
                                                     hash=False)
            except KeyError:  # the scheduler no longer knows it: retrying() goes on without
                raise WorkerLeft(f"worker {worker} left the cluster") from None
            if step:
                self._out += sum(p.nbytes for p in host) * (1 if self.direct else 2)
        return copies

    def _by_worker(self, split: ClusterSplit, indices: list[int]) -> dict[str | None, list[int]]:
        """The chunks by the worker that holds each now (None: its worker died; the scheduler
        builds it again from its recipe, wherever it runs its task)."""
        holders = self.client.who_has([split.chunks[i] for i in indices])
        groups: dict[str | None, list[int]] = {}
        for i in indices:
            groups.setdefault((holders.get(split.chunks[i].key) or [None])[0], []).append(i)
        return groups

    def _per_worker(self, function: Any, split: ClusterSplit, indices: list[int],
                    params: dict[str, Future], *args: Any, tree: bool = False) -> list[Any]:
        """function(worker's copy of params, *args, *its chunks) on each worker that holds
        some, gathered directly from the workers (with `tree`, first summed on the workers,
        see _summed). `args` may be a callable of the worker's chunk indices, for per-chunk
        arguments."""
        tasks = []
        for worker, chunks in self._by_worker(split, indices).items():
            own = [a(chunks) if callable(a) else a for a in args]
            copy = params.get(worker) or next(iter(params.values()))
            tasks.append(self.client.submit(
                function, copy, *own, *(split.chunks[i] for i in chunks),
                workers=[worker] if worker else None, allow_other_workers=True, pure=False))
        if tree:
            tasks = self._summed(tasks)
        return self.client.gather(tasks, direct=self.direct)

    def _summed(self, parts: list[Future]) -> list[Future]:
        """The partial sums added up FAN_IN at a time on the workers (each sum where the
        scheduler finds most of its inputs), level by level, until at most FAN_IN are left:
        on many workers, the client then receives FAN_IN sums, not one per worker."""
        while len(parts) > FAN_IN:
            groups = [parts[i:i + FAN_IN] for i in range(0, len(parts), FAN_IN)]
            parts = [self.client.submit(add_up, *group, pure=False) if len(group) > 1
                     else group[0] for group in groups]
        return parts

    def gradient(self, params: list[np.ndarray], split: ClusterSplit,
                 local: dict[int, np.ndarray] | None, batch_rows: int, settings: Settings,
                 with_loss: bool) -> tuple[float | None, list[np.ndarray]]:
        """The batch's loss and gradient: on each worker, the sum over the chunks it holds
        (the batch's rows of them, for a mini-batch); here, the sum of those partial sums."""
        indices = list(range(len(split.chunks))) if local is None else sorted(local)
        shared = self._broadcast(params, step=True)
        parts = self._per_worker(worker_gradient, split, indices, shared, settings, batch_rows,
                                 with_loss, lambda chunks: [None if local is None else local[i]
                                                            for i in chunks], tree=True)
        hops = 1 if self.direct else 2
        self._back += hops * sum(sum(g.nbytes for g in grads) + 8 for _, grads in parts)
        self._steps += 1
        return add_up(*parts)

    def hits(self, params: list[np.ndarray], split: ClusterSplit, activation: str) -> float:
        shared = self._broadcast(params, step=False)
        return float(sum(self._per_worker(worker_hits, split, list(range(len(split.chunks))),
                                          shared, activation)))

    # what crossed the network, and faults

    def traffic(self) -> Traffic:
        """Bytes moved so far by steps and evaluations (see Traffic)."""
        def moved(dask_worker: Any) -> tuple[int, int]:
            total = chunks = 0
            for entry in dask_worker.transfer_incoming_log:
                total += entry.get("total", 0)
                chunks += sum(str(key).startswith("mnist-xp-chunk-") for key in entry["keys"])
            return total, chunks

        logs = self.client.run(moved).values()
        return Traffic(self._out, self._back, sum(t for t, _ in logs), sum(c for _, c in logs),
                       self._steps, self.direct)

    def retrying(self, work: Any, *args: Any) -> Any:
        """work(*args), again when a worker left in the middle of it (a connection closed, as
        the scheduler notices the loss): nothing has changed here until the step's results
        are in, and the lost chunks are built again from their recipes. A third failure, or a
        task whose workers kept dying, stops the run in one line; what was checkpointed
        before stays as it was."""
        for attempt in range(RETRIES):
            with self.faults():
                try:
                    return work(*args)
                except OSError:  # CommClosedError and kin: a worker went away
                    if attempt == RETRIES - 1:
                        raise
                    time.sleep(RETRY_WAIT_S)
        raise AssertionError("unreachable")

    @contextlib.contextmanager
    def faults(self) -> Iterator[None]:
        """Errors the cluster cannot recover from, as one line (ClusterError)."""
        from distributed import CancelledError, KilledWorker

        try:
            yield
        except (KilledWorker, CancelledError, OSError, TimeoutError) as exc:
            raise ClusterError(f"the cluster lost work it could not redo "
                               f"({type(exc).__name__}: {exc}); the run stopped: resume from "
                               f"its last checkpoint with --resume") from None


def start(workers: int | None, scheduler: str | None, gpu: bool) -> ClusterBackend:
    """Connect to the scheduler at `scheduler`, or start a LocalCluster of `workers` workers
    here (one thread each; with gpu, dask-cuda's LocalCUDACluster, one worker per GPU).
    Work stealing is off on a cluster started here: it would move data chunks between
    workers to balance tasks, which is what this backend is built to avoid."""
    if scheduler is not None:
        return _backend(_connect(scheduler), None, gpu)
    with dask.config.set({"distributed.scheduler.work-stealing": False}):
        if gpu:
            try:
                from dask_cuda import LocalCUDACluster
            except ImportError:
                raise BackendError('--backend dask --device cuda needs dask-cuda: pip install '
                                   '"mnist-xp[dask-cuda]"') from None
            cluster = LocalCUDACluster(n_workers=workers, dashboard_address=":0",
                                       silence_logs=logging.ERROR)
        else:
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                   dashboard_address=":0", silence_logs=logging.ERROR)
    client = Client(cluster)
    try:
        client.register_plugin(OwnProcessGroup())
    except BaseException:
        client.close()
        cluster.close()
        raise
    return _backend(client, cluster, gpu)


def _connect(scheduler: str) -> Client:
    """A client of the scheduler at this address, or one line saying why not. The connection
    runs in a thread of its own with a deadline: distributed's own timeout does not cover a
    server that accepts the connection but never answers as a scheduler (a web server, the
    dashboard's port)."""
    import threading

    from distributed.comm.addressing import parse_address, parse_host_port

    try:
        parse_host_port(parse_address(scheduler)[1])
    except ValueError as exc:
        raise BackendError(f"--scheduler {scheduler}: not a scheduler's address, which reads "
                           f"tcp://HOST:PORT ({exc})") from None
    outcome: dict[str, Any] = {}

    def connect() -> None:
        try:
            outcome["client"] = Client(scheduler, timeout=CONNECT_TIMEOUT_S,
                                       set_as_default=False)
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=connect, name="mnist-xp-connect", daemon=True)
    thread.start()
    thread.join(CONNECT_TIMEOUT_S + 5)
    exc = outcome.get("error")
    if "client" in outcome:
        return outcome["client"]
    if exc is None or isinstance(exc, MemoryError):
        raise BackendError(f"--scheduler {scheduler}: something answered, but not as a Dask "
                           f"scheduler (a scheduler listens on tcp://HOST:8786 by default; "
                           f"8787 is its dashboard)") from None
    if isinstance(exc, (OSError, TimeoutError)):
        raise BackendError(f"--scheduler {scheduler}: no Dask scheduler answered "
                           f"({exc})") from None
    raise exc


def _backend(client: Client, cluster: LocalCluster | None, gpu: bool) -> ClusterBackend:
    """The backend over this client; the client (and a cluster started here) closed again if
    the backend cannot be made, so that no worker process outlives the error."""
    try:
        return ClusterBackend(client, cluster, gpu=gpu)
    except BaseException:
        client.close()
        if cluster is not None:
            cluster.close()
        raise
