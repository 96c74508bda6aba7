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
import math
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import dask
import numpy as np
from distributed import Client, Future, LocalCluster

from .. import nn
from ..backends import numpy_backend
from ..config import Config
from ..data import Dataset
from ..errors import LostWork
from ..optim import State, make_optimizer
from ..step import optimizer_state
from .worker import (
    Recipe,
    Settings,
    add_up,
    build_chunk,
    chunk_rows_of,
    worker_gradient,
    worker_hits,
)

CHUNKS_PER_WORKER = 4
FAN_IN = 4  # partial sums added at a time in the tree on the workers (and at most back here)
REACH_TIMEOUT_S = 20  # the deadline for reaching a worker directly
RETRIES = 3  # attempts at a step or an evaluation when a worker leaves during it
RETRY_WAIT_S = 1.0
WORKERS_GONE_S = 10  # how long a cluster may show no worker before the run stops


class WorkerLeft(OSError):
    """A worker left in the middle of a step (retrying() tries the step again without it)."""


class ClusterError(LostWork):
    """The cluster lost work it could not redo: the run stops, checkpoints intact (exit 1)."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --- here: the split, the step, the accuracy -----------------------------------------------

class ClusterSplit:
    """A split as chunk futures on the workers, with the global row each chunk starts at."""

    def __init__(self, chunks: list[Future], sizes: list[int], read_on_workers: bool) -> None:
        self.chunks, self.read_on_workers = chunks, read_on_workers
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

    def __init__(self, engine: ClusterEngine, config: Config, inner_chunk: int | None) -> None:
        self.engine, self.config = engine, config
        self.optimizer = make_optimizer(config.optimizer, config.lr, config.weight_decay,
                                        config.momentum)
        self.settings = Settings(config.activation, config.output, config.loss, inner_chunk)
        self.tail = nn.ARRAY_API_TAIL
        self.traces = 0

    def initial_state(self, params: list[Any], t: int = 0,
                      host_state: dict[str, list[np.ndarray]] | None = None) -> State:
        """The optimizer's state here (step.optimizer_state on NumPy)."""
        return optimizer_state(self.engine.backend, self.optimizer, params, self.config.dtype,
                               t, host_state)

    def __call__(self, params: list[np.ndarray], state: State, batch: Any,
                 with_loss: bool = False) -> tuple[list[np.ndarray], State, Any]:
        self.traces += 1
        split, local = (batch.split, batch.local) if isinstance(batch, ClusterBatch) else (
            batch, None)
        loss, grads = self.engine.retrying(self.engine.gradient, params, split, local,
                                           batch.rows, self.settings, with_loss)
        params, state = self.optimizer.update(params, grads, state)
        return params, state, loss


class ClusterAccuracy:
    """accuracy(params, split): the hits counted on the workers, summed here."""

    def __init__(self, engine: ClusterEngine, activation: str) -> None:
        self.engine, self.activation = engine, activation

    def __call__(self, params: list[np.ndarray], split: ClusterSplit) -> float:
        return self.engine.retrying(self.engine.hits, params, split, self.activation
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

    def describe(self, parameter_bytes: int) -> str:
        """One line: bytes per step, against the parameters' size, and where they went."""
        moved = ("no data chunk moved between workers" if not self.chunks_moved else
                 f"{self.chunks_moved} data chunk transfers between workers (is work stealing "
                 f"on? distributed.scheduler.work-stealing: false keeps data in place)")
        return (f"network: {self.per_step / 1e3:.1f} kB per step, "
                f"{self.per_step / parameter_bytes:.2f}x the {parameter_bytes / 1e3:.1f} kB of "
                f"parameters (out {self.out / 1e3:.0f} kB, back {self.back / 1e3:.0f} kB, "
                f"between workers {self.between / 1e3:.0f} kB over {self.steps} steps"
                f"{'' if self.direct else ', relayed by the scheduler'}); {moved}")


class ClusterEngine:
    """The cluster engine: parameters and the optimizer here (NumPy), data and the gradient's
    arithmetic on the workers of a dask.distributed cluster. It has the local engine's
    methods (step.LocalEngine), and counts what crosses the network (traffic)."""

    on_gpu = False  # here: the GPUs, if any, are the workers'
    default_chunk_rows = None  # a split is cut into CHUNKS_PER_WORKER chunks per worker
    library = "dask"

    def __init__(self, client: Client, cluster: LocalCluster | None = None, gpu: bool = False,
                 note: str = "") -> None:
        self.client, self.cluster, self.gpu, self.note = client, cluster, gpu, note
        self.backend = numpy_backend()  # where the parameters live
        self._out = self._back = self._steps = 0
        self._keys = 0
        self.address = client.scheduler.address
        self.name = self.describe()
        self.direct = self._reaches_workers()  # else the scheduler relays parameters and sums

    def _reaches_workers(self) -> bool:
        """Whether this client can send to every worker directly (not so for a cluster whose
        workers are reachable only from its scheduler, e.g. behind a Kubernetes service)."""
        try:
            for worker in self.workers:
                self.client.scatter(np.zeros(1), workers=[worker], direct=True, hash=False,
                                    timeout=REACH_TIMEOUT_S)
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
    def device_name(self) -> str:
        return "cuda" if self.gpu else "cpu"

    @contextlib.contextmanager
    def peak_memory(self) -> Iterator[list[int | None]]:
        """None: the data and the arithmetic are on the workers, not here."""
        yield [None]

    @property
    def workers(self) -> list[str]:
        """The workers' addresses. The client's copy of the scheduler's information is
        refreshed in the background and can be empty for an instant: asked again then, and
        a cluster with no worker for WORKERS_GONE_S is one line (ClusterError)."""
        deadline = time.monotonic() + WORKERS_GONE_S
        while True:
            self._check_scheduler()
            workers = list(self.client.scheduler_info().get("workers", {}))
            if workers:
                return workers
            if time.monotonic() > deadline:
                raise ClusterError("the cluster has no worker left")
            time.sleep(0.1)

    def _check_scheduler(self) -> None:
        """ClusterError at once when this client has lost its scheduler (it died, or the
        network to it went away): nothing a retry could mend."""
        if self.client.status not in ("running", "newly-created"):
            raise ClusterError(f"the scheduler at {self.address} was lost (the client is "
                               f"{self.client.status})")

    def close(self) -> None:
        """Disconnect, and shut down the LocalCluster this engine started."""
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    def __enter__(self) -> ClusterEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __str__(self) -> str:
        return self.name

    # the data

    def place(self, data: Dataset, split: str, dtype: str, chunk_rows: int | None = None, *,
              copies: int = 1, seed: int = 0) -> ClusterSplit:
        """data's "train" or "test" split in row chunks built on the workers (round robin),
        copies included: read there from the split's files when every worker can, else
        shipped once from here."""
        images, labels = data.split(split)
        workers = self.workers
        n = len(labels)
        total = n * copies
        per_chunk = chunk_rows or math.ceil(total / (CHUNKS_PER_WORKER * len(workers)))
        per_chunk = max(1, min(per_chunk, n))
        readable = data.source is not None and self._can_read(data.source)
        chunks, sizes = [], []
        for copy in range(copies):
            for start in range(0, n, per_chunk):
                stop = min(start + per_chunk, n)
                recipe = Recipe(start, stop, copy, seed, dtype, self.gpu)
                if readable:
                    recipe = recipe._replace(dataset=data.name, folder=data.source, split=split)
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
        return ClusterSplit(chunks, sizes, readable)

    def _can_read(self, folder: str) -> bool:
        """Whether every worker sees the split's files (a folder shared with them)."""
        def check(folder: str) -> bool:
            return Path(folder).is_dir()

        try:
            return all(self.client.run(check, folder).values())
        except Exception:  # a worker that cannot even run the check: ship the data
            return False

    # the step and the accuracy

    def train_step(self, config: Config, chunk_size: int | None = None, tail: Any = None
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
            where = {"workers": [worker], "allow_other_workers": True} if worker else {}
            tasks.append(self.client.submit(  # where a chunk's worker died: anywhere
                function, copy, *own, *(split.chunks[i] for i in chunks), pure=False, **where))
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
        from distributed import CancelledError

        for attempt in range(RETRIES):
            with self.faults():
                try:
                    return work(*args)
                except (OSError, CancelledError) as exc:
                    # a connection closed (CommClosedError and kin), or the parameters sent
                    # to a worker that died were lost with it ("already forgotten")
                    self._check_scheduler()
                    if attempt == RETRIES - 1:
                        raise
                    warnings.warn(f"a worker was lost during the work ({type(exc).__name__}): "
                                  f"redone on the workers left, its rows rebuilt from their "
                                  f"recipes", stacklevel=2)
                    time.sleep(RETRY_WAIT_S)
        raise AssertionError("unreachable")

    @contextlib.contextmanager
    def faults(self) -> Iterator[None]:
        """Errors the cluster cannot recover from, as one line (ClusterError)."""
        from distributed import CancelledError, KilledWorker

        try:
            yield
        except (KilledWorker, CancelledError, OSError, TimeoutError) as exc:
            self._check_scheduler()
            raise ClusterError(f"the cluster lost work it could not redo "
                               f"({type(exc).__name__}: {_first_line(exc)})") from None
