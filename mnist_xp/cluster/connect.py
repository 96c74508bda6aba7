"""Starting a Dask cluster here (a LocalCluster, or dask-cuda's LocalCUDACluster) or joining a
running one by its scheduler's address, as a ClusterEngine. A cluster started here listens on
loopback only and speaks TLS with credentials made for the run; a running one is reached at
an address Dask speaks, with this client's TLS credentials where it asks for them."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import dask
from distributed import Client, LocalCluster
from distributed.security import Security

from ..errors import BackendError
from .engine import ClusterEngine
from .worker import OwnProcessGroup

CONNECT_TIMEOUT_S = 20  # the deadline for a scheduler's answer
REACH_S = 3  # the deadline for reaching its port at all
LOCAL_CONNECT_S = 5  # a connection on loopback (to a worker just killed: refused until then)
WORKERS_S = 30  # the deadline for a first worker to join a running scheduler
SCHEMES = ("tcp", "tls", "inproc", "ucx")  # what Dask speaks
LOOPBACK = "127.0.0.1"  # where a cluster started here listens

class Credentials(NamedTuple):
    """The TLS files this client shows a scheduler at a tls:// address, and trusts it by."""

    ca: Path
    cert: Path
    key: Path


def start(workers: int | None, scheduler: str | None, gpu: bool, *, dashboard: bool = False,
          credentials: Credentials | None = None) -> ClusterEngine:
    """Connect to the scheduler at `scheduler`, or start a LocalCluster of `workers` workers
    here (one thread each; with gpu, dask-cuda's LocalCUDACluster, one worker per GPU).

    A cluster started here lets no one else in: its scheduler, workers and (with
    `dashboard`) dashboard listen on the loopback address only, and they speak TLS with
    credentials made for this run (distributed's Security.temporary), so another local user
    can neither join it nor submit work to it. Work stealing is off: it would move data
    chunks between workers to balance tasks, which is what this engine is built to avoid."""
    _quiet()
    if scheduler is not None:
        client = _connect(scheduler, credentials)
        try:
            client.wait_for_workers(1, timeout=WORKERS_S)
        except (TimeoutError, OSError):
            client.close()
            raise BackendError(f"--scheduler {scheduler}: no worker has joined it within "
                               f"{WORKERS_S} s (start some: dask worker {scheduler})") from None
        return _engine(client, None, gpu)
    try:
        security = Security.temporary()
    except ImportError:
        raise BackendError('a local cluster makes its TLS credentials with cryptography: pip '
                           'install "mnist-xp[dask]"') from None
    where = {"host": LOOPBACK, "protocol": "tls://", "security": security,
             "dashboard_address": f"{LOOPBACK}:0",
             "silence_logs": logging.CRITICAL}  # a worker's shutdown chatter is not the user's
    settings: dict[str, Any] = {"distributed.scheduler.work-stealing": False}
    if not dashboard:  # the HTTP servers answer health checks only: no pages, logs, stacks
        settings.update({"distributed.scheduler.http.routes": ["distributed.http.health"],
                         "distributed.worker.http.routes": ["distributed.http.health"]})
    undo = contextlib.ExitStack()  # what a cluster started here changes until it closes
    if not gpu and "forkserver" in multiprocessing.get_all_start_methods():
        # workers forked from a server that imported distributed and NumPy once: a worker
        # that dies is replaced in a fraction of the CPU a fresh interpreter takes (read by
        # the nannies at each start, so it stays set while the cluster lives)
        undo.enter_context(dask.config.set(
            {"distributed.worker.multiprocessing-method": "forkserver"}))
        _prepare_forkserver()
    cluster = client = None
    try:
        with dask.config.set(settings):
            if gpu:
                try:
                    from dask_cuda import LocalCUDACluster
                except ImportError:
                    raise BackendError('--backend dask --device cuda needs dask-cuda: pip '
                                       'install "mnist-xp[dask-cuda]"') from None
                cluster = LocalCUDACluster(n_workers=workers, **where)
            else:
                cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                       **where)
        client = Client(cluster, security=security, timeout=LOCAL_CONNECT_S)
        client.register_plugin(OwnProcessGroup())
    except BaseException:
        for opened in (client, cluster, undo):
            if opened is not None:
                opened.close()
        raise
    note = ""
    if dashboard:
        import importlib.util

        live = importlib.util.find_spec("bokeh") is not None
        note = f"dashboard at {client.dashboard_link}" + (
            "" if live else "; pip install bokeh for its live pages")
    return _engine(client, cluster, gpu, note, on_close=undo.close)


def _prepare_forkserver() -> None:
    """The forkserver imports this package's worker code too, beside what distributed has it
    import: a worker forked from it starts with it, not importing it while the workers it
    joins are in the middle of a step; and server_group, which moves the server out of this
    command's process group. In effect only where the forkserver has not started yet."""
    import multiprocessing.forkserver

    from distributed.utils import get_mp_context

    context = get_mp_context()  # distributed's own list set first, then extended
    modules = getattr(multiprocessing.forkserver._forkserver, "_preload_modules", None)
    context.set_forkserver_preload([*(modules or ["distributed"]), f"{__package__}.worker",
                                    f"{__package__}.server_group"])


def _quiet() -> None:
    """distributed's own log lines (a worker lost, a reconnection given up, with their
    tracebacks) stay off the terminal: the engine reports each fault itself, in one line."""
    names = [name for name in logging.root.manager.loggerDict if name.startswith("distributed")]
    for name in ["distributed", *names]:
        logging.getLogger(name).setLevel(logging.CRITICAL)


def check_address(scheduler: str, credentials: Credentials | None) -> tuple[str, str]:
    """(scheme, HOST:PORT) of a --scheduler address Dask speaks, or one line saying why
    not: an unknown scheme, a malformed address, tls:// without credentials (or with files
    that are not there), credentials for a scheme that does not use them."""
    from distributed.comm.addressing import parse_address, parse_host_port

    scheme = scheduler.partition("://")[0].lower() if "://" in scheduler else ""
    if scheme not in SCHEMES:
        raise BackendError(f"--scheduler {scheduler}: not a scheduler's address, which reads "
                           f"SCHEME://HOST:PORT with a scheme Dask speaks "
                           f"({', '.join(SCHEMES)}), e.g. tls://10.0.0.5:8786")
    try:
        location = parse_address(scheduler)[1]
        if scheme in ("tcp", "tls"):
            parse_host_port(location)
    except ValueError as exc:
        raise BackendError(f"--scheduler {scheduler}: not a scheduler's address, which reads "
                           f"tcp://HOST:PORT ({exc})") from None
    if scheme == "tls" and credentials is None and not dask.config.get(
            "distributed.comm.tls.client.cert", None):
        raise BackendError(f"--scheduler {scheduler}: a tls:// scheduler needs this client's "
                           f"credentials: --tls-ca FILE --tls-cert FILE --tls-key FILE")
    if credentials is not None:
        if scheme != "tls":
            raise BackendError(f"--tls-ca, --tls-cert and --tls-key are for a tls:// "
                               f"scheduler, not {scheme}://")
        for flag, path in zip(("--tls-ca", "--tls-cert", "--tls-key"), credentials):
            if not Path(path).is_file():
                raise BackendError(f"{flag} {path}: no such file")
    return scheme, location


def _reachable(scheduler: str, scheme: str, location: str) -> None:
    """A scheduler's port that refuses connections, or a host that never answers, is one
    line within REACH_S seconds (distributed would retry until its own timeout)."""
    import socket

    from distributed.comm.addressing import parse_host_port

    if scheme not in ("tcp", "tls"):
        return
    host, port = parse_host_port(location)
    try:
        with socket.create_connection((host, port), timeout=REACH_S):
            pass
    except ConnectionRefusedError:
        raise BackendError(f"--scheduler {scheduler}: nothing listens there (connection "
                           f"refused): is the scheduler running?") from None
    except OSError as exc:
        raise BackendError(f"--scheduler {scheduler}: no answer within {REACH_S} s "
                           f"({exc.strerror or exc})") from None


def _connect(scheduler: str, credentials: Credentials | None = None) -> Client:
    """A client of the scheduler at this address, or one line saying why not. The connection
    runs in a thread of its own with a deadline: distributed's own timeout does not cover a
    server that accepts the connection but never answers as a scheduler (a web server, the
    dashboard's port)."""
    import threading

    scheme, location = check_address(scheduler, credentials)
    _reachable(scheduler, scheme, location)
    security = None if credentials is None else Security(
        tls_ca_file=str(credentials.ca), tls_client_cert=str(credentials.cert),
        tls_client_key=str(credentials.key), require_encryption=True)
    outcome: dict[str, Any] = {}

    def connect() -> None:
        try:
            outcome["client"] = Client(scheduler, timeout=CONNECT_TIMEOUT_S,
                                       set_as_default=False, security=security)
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
    if isinstance(exc, ssl.SSLError) or "SSL" in str(exc) or "certificate" in str(exc):
        raise BackendError(f"--scheduler {scheduler}: the TLS handshake failed: the "
                           f"scheduler and this client do not trust each other's certificates "
                           f"({_first_line(exc)})") from None
    if isinstance(exc, (OSError, TimeoutError, ValueError, TypeError)):
        raise BackendError(f"--scheduler {scheduler}: no Dask scheduler answered "
                           f"({_first_line(exc)})") from None
    raise exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _engine(client: Client, cluster: LocalCluster | None, gpu: bool, note: str = "",
            on_close: Callable[[], Any] | None = None) -> ClusterEngine:
    """The engine over this client; the client (and a cluster started here) closed again if
    the engine cannot be made, so that no worker process outlives the error."""
    engine = None
    try:
        engine = ClusterEngine(client, cluster, gpu=gpu, note=note, on_close=on_close)
        return engine
    finally:
        if engine is None:
            client.close()
            if cluster is not None:
                cluster.close()
            if on_close is not None:
                on_close()
