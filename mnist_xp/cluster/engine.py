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

import asyncio
import contextlib
import math
import time
import warnings
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import dask
import numpy as np
from distributed import Client, Future, LocalCluster

from .. import nn
from ..backends import numpy_backend
from ..config import Config
from ..data import Dataset
from ..distort import Distortion
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
LOSS_SEEN_S = 1.0  # the longest wait, after a failed step, for the scheduler to drop a worker
SCATTER_WAIT_S = 1.0  # how long a worker the scheduler no longer lists is waited for
WATCH_S = 0.05  # how often the scheduler is asked, during a step, whether a worker left
WORKERS_GONE_S = 10  # how long a cluster may show no worker before the run stops


class WorkerLeft(OSError):
    """A worker left in the middle of a step (retrying() tries the step again without it)."""


class ClusterError(LostWork):
    """The cluster lost work it could not redo: the run stops, checkpoints intact (exit 1)."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _keep_alive(kept: dict[tuple[int, ...], Future]) -> None:
    """Drops from `kept` the results lost with their worker, cancelled or failed."""
    for chunks in [c for c, future in kept.items()
                   if future.status not in ("finished", "pending")]:
        del kept[chunks]


# --- here: the split, the step, the accuracy -----------------------------------------------

class ClusterSplit:
    """A split as chunk futures on the workers, with the global row each chunk starts at and
    the recipe each was built from (to build it again on a worker that joins later)."""

    def __init__(self, chunks: list[Future], sizes: list[int], recipes: list[Recipe],
                 placed: list[str], read_on_workers: bool) -> None:
        self.chunks, self.recipes, self.read_on_workers = chunks, recipes, read_on_workers
        self.starts = np.concatenate([[0], np.cumsum(sizes)])
        self.rows = int(self.starts[-1])
        self.placed = placed  # the worker each chunk was built on
        self.moving: dict[int, tuple[str, Future]] = {}  # chunk -> (new worker, its new copy)
        self.balanced_on: set[str] = set()  # the workers its chunks were last spread over

    def take(self, rows: np.ndarray) -> ClusterBatch:
        """The batch of these global rows, as each chunk's local rows."""
        rows = np.asarray(rows)
        owner = np.searchsorted(self.starts, rows, side="right") - 1
        local = {int(i): rows[owner == i] - self.starts[i] for i in np.unique(owner)}
        return ClusterBatch(self, local, len(rows))

    def distorted(self, rows: Any, how: Distortion, seed: int, epoch: int) -> ClusterBatch:
        """All the rows, their images to be distorted on the workers (DeviceSplit.distorted)."""
        return ClusterBatch(self, None, self.rows, (how, seed, epoch))


class ClusterBatch(NamedTuple):
    """Some rows of a ClusterSplit (chunk index -> its rows in the batch; None: all), and how
    the workers distort their images (Distortion, seed, epoch), if at all."""

    split: ClusterSplit
    local: dict[int, np.ndarray] | None
    rows: int
    distortion: tuple[Distortion, int, int] | None = None

    def distorted(self, rows: Any, how: Distortion, seed: int, epoch: int) -> ClusterBatch:
        """This batch, its images to be distorted on the workers (DeviceSplit.distorted)."""
        return self._replace(distortion=(how, seed, epoch))


class ClusterStep:
    """One optimizer step on the cluster (see the module's docstring)."""

    def __init__(self, engine: ClusterEngine, config: Config, inner_chunk: int | None,
                 total_steps: int | None = None) -> None:
        self.engine, self.config = engine, config
        self.optimizer = make_optimizer(config.optimizer, config.lr, config.weight_decay,
                                        config.momentum,
                                        schedule=config.schedule_for(total_steps or config.steps))
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
        split, local, distortion = (batch.split, batch.local, batch.distortion) if isinstance(
            batch, ClusterBatch) else (batch, None, None)
        loss, grads = self.engine.retrying(self.engine.gradient, params, split, local,
                                           batch.rows, self.settings, with_loss, distortion, {})
        params, state = self.optimizer.update(params, grads, state)
        return params, state, loss


class ClusterAccuracy:
    """accuracy(params, split): the hits counted on the workers, summed here."""

    def __init__(self, engine: ClusterEngine, activation: str) -> None:
        self.engine, self.activation = engine, activation

    def __call__(self, params: list[np.ndarray], split: ClusterSplit) -> float:
        return self.engine.retrying(self.engine.hits, params, split, self.activation, {}
                                    ) / split.rows


class Traffic(NamedTuple):
    """Bytes the steps moved so far: parameters out, partial sums back (every hop: twice where
    the scheduler relays them), and between workers (from the workers' own transfer logs,
    evaluations included), with any data chunk that moved between workers; and apart from
    the steps' bytes, the rows sent again from here to rebuild chunks after a fault or for a
    worker that joined (data not read from files on the workers)."""

    out: int
    back: int
    between: int
    chunks_moved: int
    steps: int
    direct: bool = True  # client <-> workers directly, not through the scheduler
    reshipped: int = 0  # rows sent again from here (via the scheduler) to rebuild chunks

    @property
    def per_step(self) -> float:
        return (self.out + self.back + self.between) / max(self.steps, 1)

    def describe(self, parameter_bytes: int) -> str:
        """One line: bytes per step, against the parameters' size, and where they went."""
        moved = ("no data chunk moved between workers" if not self.chunks_moved else
                 f"{self.chunks_moved} data chunk transfers between workers (is work stealing "
                 f"on? distributed.scheduler.work-stealing: false keeps data in place)")
        again = (f"; {self.reshipped / 1e3:.0f} kB of rows sent again, through the scheduler, "
                 f"to rebuild chunks a lost worker held or a new one took" if self.reshipped
                 else "")
        return (f"network: {self.per_step / 1e3:.1f} kB per step, "
                f"{self.per_step / parameter_bytes:.2f}x the {parameter_bytes / 1e3:.1f} kB of "
                f"parameters (out {self.out / 1e3:.0f} kB, back {self.back / 1e3:.0f} kB, "
                f"between workers {self.between / 1e3:.0f} kB over {self.steps} steps"
                f"{'' if self.direct else ', relayed by the scheduler'}); {moved}{again}")


class ClusterEngine:
    """The cluster engine: parameters and the optimizer here (NumPy), data and the gradient's
    arithmetic on the workers of a dask.distributed cluster. It has the local engine's
    methods (step.LocalEngine), and counts what crosses the network (traffic)."""

    on_gpu = False  # here: the GPUs, if any, are the workers'
    default_chunk_rows = None  # a split is cut into CHUNKS_PER_WORKER chunks per worker
    library = "dask"

    def __init__(self, client: Client, cluster: LocalCluster | None = None, gpu: bool = False,
                 note: str = "", on_close: Callable[[], Any] | None = None) -> None:
        self.client, self.cluster, self.gpu, self.note = client, cluster, gpu, note
        self._on_close = on_close  # what else closing the cluster undoes
        self.backend = numpy_backend()  # where the parameters live
        self._out = self._back = self._steps = self._reshipped = 0
        self._keys = 0
        self._sent_to: list[str] = []  # the workers the parameters last went to
        # the parameters last sent for the work retrying() attempts, and each worker's copy
        self._copies: tuple[tuple[np.ndarray, ...], dict[str, list[Future]]] = ((), {})
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
        """The addresses of the workers running now, asked of the scheduler (the client's
        own copy of its information is refreshed every few seconds: it would still list a
        worker that died); a cluster with no worker for WORKERS_GONE_S is one line
        (ClusterError)."""
        deadline = time.monotonic() + WORKERS_GONE_S
        while True:
            workers = self._running()
            if workers:
                return workers
            if time.monotonic() > deadline:
                raise ClusterError("the cluster has no worker left")
            time.sleep(0.1)

    def _running(self) -> list[str]:
        """The workers the scheduler counts as running (not paused, not closing)."""
        self._check_scheduler()
        return sorted(self.client.sync(self._ask_running))

    async def _ask_running(self) -> dict[str, int]:
        """The scheduler's answer; a scheduler that cannot be asked is lost (ClusterError)."""
        try:
            return await self.client.scheduler.ncores_running()
        except OSError as exc:
            raise ClusterError(f"the scheduler at {self.address} was lost "
                               f"({type(exc).__name__}: {_first_line(exc)})") from None

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
        if self._on_close is not None:
            self._on_close()
            self._on_close = None

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
        chunks, sizes, recipes, placed = [], [], [], []
        for copy in range(copies):
            for start in range(0, n, per_chunk):
                stop = min(start + per_chunk, n)
                recipe = Recipe(start, stop, copy, seed, dtype, self.gpu)
                if readable:
                    recipe = recipe._replace(dataset=data.name, folder=data.source, split=split)
                else:
                    recipe = recipe._replace(images=images[start:stop], labels=labels[start:stop],
                                             base_rows=n)
                placed.append(workers[len(chunks) % len(workers)])
                chunks.append(self._build(recipe, placed[-1]))
                sizes.append(stop - start)
                recipes.append(recipe)
        with self.faults():  # built, or the recipe's error here
            self.client.gather(self.client.map(chunk_rows_of, chunks, pure=False))
        return ClusterSplit(chunks, sizes, recipes, placed, readable)

    def _rebuild(self, recipe: Recipe, worker: str, elsewhere: bool = True) -> Future:
        """_build during the run: the rows a recipe carries (data not read from files) are
        counted, twice (here to the scheduler, the scheduler to the worker)."""
        if recipe.images is not None:
            self._reshipped += 2 * (recipe.images.nbytes + recipe.labels.nbytes)
        return self._build(recipe, worker, elsewhere)

    def _build(self, recipe: Recipe, worker: str, elsewhere: bool = True) -> Future:
        """The chunk of this recipe, built on `worker` (or, if it is lost, `elsewhere`)."""
        self._keys += 1
        with warnings.catch_warnings():  # the shipped rows travel once, in the recipe
            warnings.simplefilter("ignore", UserWarning)
            return self.client.submit(build_chunk, recipe, key=f"mnist-xp-chunk-{self._keys}",
                                      workers=[worker], allow_other_workers=elsewhere,
                                      pure=False)

    def _rebalance(self, split: ClusterSplit) -> None:
        """A worker that joined after the split was placed takes its share of the chunks:
        they are built again there from their recipes, beside the running steps, and used
        from the first step after they are ready (the copies they replace are then let go).
        The rows are the same, so the numbers are too."""
        for i, (worker, future) in list(split.moving.items()):
            if future.status == "finished":
                split.chunks[i], split.placed[i] = future, worker
            elif future.status == "pending" and worker in self._sent_to:
                continue
            else:  # it failed, or its worker left: look again
                split.balanced_on = set()
            del split.moving[i]
        if split.balanced_on == set(self._sent_to) or len(self._sent_to) < 2:
            return  # (no one joined or left since: no need to ask where the chunks are)
        split.balanced_on = set(self._sent_to)
        holders = self._holders(split, range(len(split.chunks)))
        load = {w: 0 for w in self._sent_to}
        for worker in holders.values():
            if worker in load:
                load[worker] += 1
        for worker, _ in split.moving.values():
            load[worker] += 1
        share = len(split.chunks) // len(load)
        for newcomer in [w for w, n in load.items() if n == 0]:
            while load[newcomer] < share:
                busiest = max(load, key=load.__getitem__)
                if load[busiest] <= share:
                    break
                i = next(i for i, w in holders.items() if w == busiest and i not in split.moving)
                split.moving[i] = (newcomer, self._rebuild(split.recipes[i], newcomer, False))
                load[busiest] -= 1
                load[newcomer] += 1


    def _can_read(self, folder: str) -> bool:
        """Whether every worker sees the split's files (a folder shared with them)."""
        def check(folder: str) -> bool:
            return Path(folder).is_dir()

        try:
            return all(self.client.run(check, folder).values())
        except Exception:  # a worker that cannot even run the check: ship the data
            return False

    # the step and the accuracy

    def train_step(self, config: Config, chunk_size: int | None = None, tail: Any = None,
                   total_steps: int | None = None) -> ClusterStep:
        return ClusterStep(self, config, None if self.gpu else 2048, total_steps)

    def accuracy(self, activation: str, chunk_size: int | None = None) -> ClusterAccuracy:
        return ClusterAccuracy(self, activation)

    def _broadcast(self, params: list[np.ndarray], step: bool) -> dict[str, list[Future]]:
        """The parameters, one copy sent to each worker at once (counted when for a step):
        directly, or through the scheduler where a worker cannot be reached from here.

        In a step redone after a fault, the workers left keep the copies they were sent for
        the failed attempt: only a worker without one is sent one (see retrying). A worker
        that joined since the last broadcast holds no chunk yet: its copy is sent beside
        the step, not waited for, so that the first connection to it (TLS and all) does not
        hold the step up."""
        host = tuple(np.asarray(p) for p in params)
        held, _ = self._copies
        if len(held) != len(host) or any(a is not b for a, b in zip(held, host)):
            self._copies = (host, {})  # new parameters: the old copies are let go
        sent = self._copies[1]
        before, self._sent_to = self._sent_to, self.workers
        needed = [worker for worker in self._sent_to if worker not in sent
                  or any(part.status != "finished" for part in sent[worker])]
        stayed = set(before) & set(self._sent_to)  # none: every worker is new, all wait
        joined = [worker for worker in needed if stayed and worker not in before]
        waited = [worker for worker in needed if worker not in joined]

        def scatter(worker: str) -> Awaitable[Any]:
            if step:
                self._out += sum(p.nbytes for p in host) * (1 if self.direct else 2)
            return self.client.scatter(host, workers=[worker], direct=self.direct, hash=False,
                                       timeout=SCATTER_WAIT_S, asynchronous=True)

        async def send() -> list[Any]:
            for worker in joined:  # its outcome read, and dropped
                asyncio.ensure_future(scatter(worker)).add_done_callback(
                    lambda w: w.cancelled() or w.exception())
            return await asyncio.gather(*map(scatter, waited), return_exceptions=True)

        for worker, copy in zip(waited, self._watched(send) if needed else []):
            if isinstance(copy, (KeyError, TimeoutError)):  # the scheduler no longer lists it
                raise WorkerLeft(f"worker {worker} left the cluster") from None  # retrying()
            if isinstance(copy, BaseException):
                raise copy
            sent[worker] = copy
        return {worker: sent[worker] for worker in self._sent_to if worker in sent}

    def _holders(self, split: ClusterSplit, indices: Iterable[int]) -> dict[int, str | None]:
        """The worker that holds each of these chunks now, or is building it (None: its
        worker died)."""
        indices = list(indices)
        who_has = self.client.who_has([split.chunks[i] for i in indices])
        holders = {}
        for i in indices:
            holder = (who_has.get(split.chunks[i].key) or [None])[0]
            if holder is None and split.chunks[i].status == "pending" and \
                    split.placed[i] in self._sent_to:
                holder = split.placed[i]  # still being built there
            holders[i] = holder
        return holders

    def _by_worker(self, split: ClusterSplit, indices: list[int]) -> dict[str, list[int]]:
        """The chunks grouped by the worker that holds each now (see _holders); a chunk whose
        worker died is built again from its recipe on one of the workers left, in turn, so
        that they share the work it was doing."""
        groups: dict[str, list[int]] = {}
        lost = 0
        for i, worker in self._holders(split, indices).items():
            if worker is None:
                worker = self._sent_to[lost % len(self._sent_to)]
                split.chunks[i] = self._rebuild(split.recipes[i], worker)
                split.placed[i] = worker
                lost += 1
            groups.setdefault(worker, []).append(i)
        return groups

    def _per_worker(self, function: Any, split: ClusterSplit, indices: list[int],
                    params: dict[str, list[Future]], *args: Any, tree: bool = False,
                    kept: dict[tuple[int, ...], Future] | None = None) -> list[Any]:
        """function(worker's copy of params, *args, *its chunks) on each worker that holds
        some, gathered directly from the workers (with `tree`, first summed on the workers,
        see _summed). `args` may be a callable of the worker's chunk indices, for per-chunk
        arguments. `kept` holds the results (on their workers, or on their way) of chunk
        groups of an attempt a fault ended: only the other chunks are computed again (and
        when this attempt fails too, its own are kept in turn)."""
        kept = {} if kept is None else kept
        _keep_alive(kept)
        done = {i for chunks in kept for i in chunks}
        leaves = {}
        for worker, chunks in self._by_worker(split, [i for i in indices if i not in done]
                                              ).items():
            own = [a(chunks) if callable(a) else a for a in args]
            copy = params.get(worker) or next(iter(params.values()))
            leaves[tuple(chunks)] = self.client.submit(
                function, copy, *own, *(split.chunks[i] for i in chunks), pure=False,
                workers=[worker], allow_other_workers=True)
        tasks = [*(self._summed(list(leaves.values())) if tree else leaves.values()),
                 *kept.values()]
        try:
            return self._watched(lambda: self.client.gather(tasks, direct=self.direct,
                                                            asynchronous=True))
        except BaseException:
            kept.update(leaves)
            _keep_alive(kept)
            raise

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
                 with_loss: bool, distortion: tuple[Distortion, int, int] | None = None,
                 kept: dict[tuple[int, ...], Future] | None = None
                 ) -> tuple[float | None, list[np.ndarray]]:
        """The batch's loss and gradient: on each worker, the sum over the chunks it holds
        (the batch's rows of them, for a mini-batch); here, the sum of those partial sums.
        `kept`: what earlier attempts at this step finished (see _per_worker)."""
        indices = list(range(len(split.chunks))) if local is None else sorted(local)
        shared = self._broadcast(params, step=True)
        self._rebalance(split)
        parts = self._per_worker(worker_gradient, split, indices, shared, settings, batch_rows,
                                 with_loss, lambda chunks: [
                                     (None if local is None else local[i],
                                      int(split.starts[i])) for i in chunks],
                                 distortion, tree=True, kept=kept)
        hops = 1 if self.direct else 2
        self._back += hops * sum(sum(g.nbytes for g in grads) + 8 for _, grads in parts)
        self._steps += 1
        return add_up(*parts)

    def hits(self, params: list[np.ndarray], split: ClusterSplit, activation: str,
             kept: dict[tuple[int, ...], Future] | None = None) -> float:
        shared = self._broadcast(params, step=False)
        self._rebalance(split)
        return float(sum(self._per_worker(worker_hits, split, list(range(len(split.chunks))),
                                          shared, activation, kept=kept)))

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
                       self._steps, self.direct, self._reshipped)

    def retrying(self, work: Any, *args: Any) -> Any:
        """work(*args), again when a worker left in the middle of it (a connection closed, as
        the scheduler notices the loss): nothing has changed here until the step's results
        are in, and the lost chunks are built again from their recipes. A third failure, or a
        task whose workers kept dying, stops the run in one line; what was checkpointed
        before stays as it was."""
        from distributed import CancelledError

        self._copies = ((), {})  # copies sent for other work are not this work's
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
                    self._await_loss(self._sent_to)
        raise AssertionError("unreachable")

    def _watched(self, start: Callable[[], Awaitable[Any]]) -> Any:
        """The result of start()'s network work, unless a worker the parameters went to
        leaves meanwhile (WorkerLeft at once): distributed would keep trying to connect to a
        worker killed a moment before the scheduler noticed, until its connect timeout. The
        work is then left to end on its own (cancelling it would orphan distributed's own
        tasks), its outcome unused."""
        async def watch() -> Any:
            work = asyncio.ensure_future(start())
            try:
                while True:
                    done, _ = await asyncio.wait([work], timeout=WATCH_S)
                    if done:
                        return work.result()
                    running = await self._ask_running()
                    if not set(self._sent_to) <= set(running):
                        raise WorkerLeft("a worker left the cluster during the step")
            finally:  # when left to end on its own: its outcome read, and dropped
                work.add_done_callback(lambda w: w.cancelled() or w.exception())

        return self.client.sync(watch)

    def _await_loss(self, before: list[str]) -> None:
        """Until the scheduler has dropped a worker of `before` (the one lost; at most
        LOSS_SEEN_S): the step is redone at once on the workers left, not sent again to the
        dead one, whose address a connection would keep trying until distributed's timeout."""
        deadline = time.monotonic() + LOSS_SEEN_S
        while set(before) <= set(self._running()) and time.monotonic() < deadline:
            time.sleep(0.02)

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
