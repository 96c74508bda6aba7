"""Choosing an engine, how a step runs over the data: the local engine (step.py: the whole
step on one device) or the cluster engine (mnist_xp.cluster: rows on a Dask cluster's
workers). Both have the same methods; only the cluster's traffic() counts anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Union

from .backends import LIBRARIES, Backend, LibraryMissing, parse_device, select_backend
from .backends.libraries import adapter
from .errors import UsageError
from .step import LocalEngine

if TYPE_CHECKING:
    from .cluster import ClusterEngine

Engine = Union[LocalEngine, "ClusterEngine"]


def as_engine(where: Backend | Engine) -> Engine:
    """An engine as it is; a Backend as the local engine on it."""
    return LocalEngine(where) if isinstance(where, Backend) else where


def check_cluster(device: str, backend: str, workers: int | None, scheduler: str | None,
                  dashboard: bool = False, tls: tuple[Path | None, ...] = ()) -> None:
    """Refuse, before anything starts, cluster flags that cannot work together."""
    kind, index = parse_device(device)
    if dashboard and workers is None:
        raise UsageError("--dashboard is for a cluster started here (--workers N); a running "
                         "cluster's dashboard is its scheduler's to serve")
    if any(tls) and not all(tls):
        raise UsageError("--tls-ca, --tls-cert and --tls-key go together: give all three")
    if any(tls) and scheduler is None:
        raise UsageError("--tls-ca, --tls-cert and --tls-key are for --scheduler tls://...; "
                         "a cluster started here makes its own credentials")
    if backend.strip().lower() != "dask":
        raise UsageError("--workers and --scheduler are for --backend dask")
    if workers is not None and scheduler is not None:
        raise UsageError("--workers starts a cluster here, --scheduler joins one: give one")
    if workers is not None and workers < 1:
        raise UsageError(f"--workers {workers}: must be at least 1")
    if index is not None:
        raise UsageError(f"--device {device} with a cluster: its workers choose their GPUs "
                         f"(dask-cuda, one worker per GPU it sees); use --device cuda, and "
                         f"CUDA_VISIBLE_DEVICES={index} to give it only that one")


def select_engine(device: str = "auto", backend: str = "auto", *, workers: int | None = None,
                  scheduler: str | None = None, dashboard: bool = False,
                  tls: tuple[Path | None, ...] = ()) -> Engine:
    """The engine for --device, --backend and, for --backend dask, --workers (a LocalCluster
    of that many workers started here, its dashboard served on loopback with `dashboard`)
    or --scheduler (the address of a running Dask scheduler; `tls` the CA, certificate and
    key this client shows a tls:// one); without them, the local engine on select_backend's
    Backend. close() it after (or use it in a with block): a cluster started here stops
    then."""
    if workers is None and scheduler is None:
        if dashboard or any(tls):
            check_cluster(device, backend, workers, scheduler, dashboard, tls)
        return LocalEngine(select_backend(device, backend))
    check_cluster(device, backend, workers, scheduler, dashboard, tls)
    kind, _ = parse_device(device)
    adapter("dask")
    try:
        from . import cluster
    except ImportError as exc:
        raise LibraryMissing(f"--backend dask on a cluster needs dask.distributed "
                             f"({exc.name}): pip install {LIBRARIES['dask'].extra}") from None
    credentials = cluster.Credentials(*tls) if all(tls) and tls else None
    return cluster.start(workers, scheduler, gpu=kind == "cuda", dashboard=dashboard,
                         credentials=credentials)
