"""Starting a Dask cluster here (a LocalCluster, or dask-cuda's LocalCUDACluster) or joining a
running one by its scheduler's address, as a ClusterEngine."""

from __future__ import annotations

import logging
from typing import Any

import dask
from distributed import Client, LocalCluster

from ..errors import BackendError
from .engine import ClusterEngine
from .worker import OwnProcessGroup

CONNECT_TIMEOUT_S = 20  # the deadline for reaching a scheduler

def start(workers: int | None, scheduler: str | None, gpu: bool) -> ClusterEngine:
    """Connect to the scheduler at `scheduler`, or start a LocalCluster of `workers` workers
    here (one thread each; with gpu, dask-cuda's LocalCUDACluster, one worker per GPU).
    Work stealing is off on a cluster started here: it would move data chunks between
    workers to balance tasks, which is what this backend is built to avoid."""
    if scheduler is not None:
        return _engine(_connect(scheduler), None, gpu)
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
    return _engine(client, cluster, gpu)


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


def _engine(client: Client, cluster: LocalCluster | None, gpu: bool) -> ClusterEngine:
    """The engine over this client; the client (and a cluster started here) closed again if
    the engine cannot be made, so that no worker process outlives the error."""
    try:
        return ClusterEngine(client, cluster, gpu=gpu)
    except BaseException:
        client.close()
        if cluster is not None:
            cluster.close()
        raise
