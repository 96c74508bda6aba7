"""Training on a Dask cluster (mnist_xp/cluster/), on a LocalCluster of two single-thread
worker processes: NumPy's numbers, data that stays on its workers and only parameters and
gradients on the wire, a worker that dies mid-run, resume, the command line."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import subprocess
import sys
import types

import pytest

from mnist_xp import Config, train
from mnist_xp.backends import numpy_backend
from mnist_xp.checkpoint import load_checkpoint
from mnist_xp.cli import main
from mnist_xp.datasets import load_dataset
from mnist_xp.engines import select_engine
from mnist_xp.errors import BackendError, UsageError

from conftest import assert_close, importorskip

CASES = {
    "full-batch sgd": Config(hidden=(16,), optimizer="sgd", lr=0.5),
    "full-batch adam": Config(hidden=(16, 8), optimizer="adam", lr=3e-3, weight_decay=1e-4),
    "mini-batch sgd": Config(hidden=(16,), optimizer="sgd", lr=0.1, batch_size=50),
    "mini-batch adam": Config(hidden=(12,), activation="tanh", output="sigmoid", loss="mse",
                              optimizer="adam", lr=3e-3, batch_size=64),
    # distorted on the workers, each image as NumPy distorts it; a schedule here
    "full-batch nesterov, cosine, distorted": Config(
        hidden=(16,), optimizer="nesterov", lr=0.1, schedule="cosine", warmup=2,
        distort="both"),
    "mini-batch sgd, distorted": Config(hidden=(16,), optimizer="sgd", lr=0.1, batch_size=50,
                                        distort="elastic"),
}


@pytest.fixture(scope="module")
def cluster():
    importorskip("distributed")
    backend = select_engine("cpu", "dask", workers=2)
    yield backend
    backend.close()


def _agree(got, want, dtype="float32"):
    for a, b in zip(got.host_params(), want.host_params()):
        assert_close(a, b, dtype, scale=10)


@pytest.mark.parametrize("case", CASES)
def test_five_steps_agree_with_numpy(cluster, tiny_data, case):
    config = CASES[case].replace(steps=5)
    model, history = train(tiny_data, cluster, config, eval_every=5, log_every=1)
    reference, ref_history = train(tiny_data, numpy_backend(), config, eval_every=5, log_every=1)
    _agree(model, reference)
    assert history.final_loss == pytest.approx(ref_history.final_loss, rel=1e-5)
    assert history.last["test_accuracy"] == ref_history.last["test_accuracy"]


def test_the_data_stays_on_its_workers_and_only_parameters_travel(cluster, tiny_dir):
    """Read from files the workers can reach; then per step the parameters go out (one copy
    per worker) and one partial sum per worker comes back: 4x the parameters on 2 workers,
    whatever the number of rows, and no data chunk ever moves."""
    data = load_dataset("mnist", tiny_dir)
    split = cluster.place(data, "train", "float32")
    assert split.read_on_workers and len(split.chunks) == 8  # 4 a worker
    before = cluster.traffic()
    config = Config(hidden=(16,), optimizer="adam", steps=6)
    model, _ = train(data, cluster, config, eval_every=6)
    after = cluster.traffic()
    size = sum(p.nbytes for p in model.host_params())
    steps = after.steps - before.steps
    per_step = (after.out + after.back - before.out - before.back) / steps
    assert steps == 6 and per_step <= 4 * size + 64  # the losses' few bytes aside
    assert after.chunks_moved == 0 and after.between == before.between
    assert after.reshipped == before.reshipped  # read on the workers: no rows sent from here


def _loopback_bytes() -> int:
    """Bytes received on this machine's loopback interface so far (Linux)."""
    with open("/proc/net/dev") as counters:
        for line in counters:
            name, _, fields = line.partition(":")
            if name.strip() == "lo":
                return int(fields.split()[0])
    raise AssertionError("no loopback interface in /proc/net/dev")


@pytest.mark.skipif(not os.path.exists("/proc/net/dev"), reason="needs Linux's /proc/net/dev")
@pytest.mark.parametrize("direct", [True, False])
def test_the_bytes_on_the_wire_are_the_ones_reported(cluster, tiny_data, monkeypatch, direct):
    """Measured on the loopback that the LocalCluster talks over. Directly: out to each worker
    and back, 4x the parameters a step on 2 workers (through the scheduler's scatter with
    broadcast and its gather it was 7x, every byte relayed and the copy replicated worker to
    worker, and only 4x was counted). Relayed by the scheduler, where workers cannot be
    reached from the client: 8x, and counted so."""
    monkeypatch.setattr(cluster, "direct", direct)
    config = Config(hidden=(64,), optimizer="adam", steps=1)
    split = cluster.place(tiny_data, "train", "float32")
    model, _ = train(tiny_data, cluster, config, eval_every=1)
    params = model.host_params()
    step = cluster.train_step(config)
    state = step.initial_state(params)
    params, state, _ = step(params, state, split)  # warm: the functions reach the workers
    before, wire = cluster.traffic(), _loopback_bytes()
    for _ in range(6):
        params, state, _ = step(params, state, split)
    wire = (_loopback_bytes() - wire) / 6
    after = cluster.traffic()
    reported = (after.out + after.back + after.between
                - before.out - before.back - before.between) / (after.steps - before.steps)
    size = sum(p.nbytes for p in params)
    assert after.direct == direct
    assert reported <= (4 if direct else 8) * size + 128
    assert reported <= wire <= 1.1 * reported  # task messages and heartbeats: a few kB


def test_partial_sums_are_added_in_a_tree_on_the_workers(tiny_data, monkeypatch):
    """Three workers and a fan-in of 2: two of the partial sums are added on a worker, and
    two sums (not three) come back; the numbers are NumPy's."""
    importorskip("distributed")
    monkeypatch.setattr("mnist_xp.cluster.engine.FAN_IN", 2)
    config = Config(hidden=(16,), optimizer="adam", lr=3e-3, steps=4)
    reference, _ = train(tiny_data, numpy_backend(), config, eval_every=4)
    with select_engine("cpu", "dask", workers=3) as three:
        model, _ = train(tiny_data, three, config, eval_every=4)
        traffic = three.traffic()
    _agree(model, reference)
    size = sum(p.nbytes for p in reference.host_params())
    assert traffic.back == traffic.steps * 2 * (size + 8)
    assert traffic.between >= traffic.steps * size and traffic.chunks_moved == 0


def test_copies_built_on_the_workers_are_the_copies_built_here(cluster, tiny_data):
    config = Config(hidden=(16,), optimizer="adam", lr=3e-3, augment=3, steps=4)
    model, history = train(tiny_data, cluster, config, eval_every=4)
    reference, _ = train(tiny_data, numpy_backend(), config, eval_every=4)
    _agree(model, reference)
    assert history.steps == 4


def test_resume_on_the_cluster_equals_straight_through(cluster, tiny_data, tmp_path):
    config = Config(hidden=(16,), optimizer="adam", lr=3e-3, batch_size=70, steps=8)
    straight, _ = train(tiny_data, cluster, config, eval_every=4)
    path = tmp_path / "half.npz"
    train(tiny_data, cluster, config.replace(steps=4), eval_every=4, checkpoint=path)
    resumed, history = train(tiny_data, cluster, config, eval_every=4,
                             resume=load_checkpoint(path), steps=8)
    _agree(resumed, straight)
    assert history.steps == 8


def test_local_workers_are_forked_from_a_server_that_imported_the_worker_code(cluster):
    """A replacement worker starts with this package's worker code already imported, not
    importing it while the workers it joins are in the middle of a step: its parent, the
    forkserver, was told to import it. And that server is in a process group of its own, so
    that a signal to this command's group does not end it (which would make every worker it
    forked look dead to its nanny)."""
    def parent() -> tuple[str, int]:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as cmdline:
            return cmdline.read().decode(), os.getpgid(os.getppid())

    if not os.path.exists("/proc/self/cmdline"):
        pytest.skip("needs /proc to read a process's command line")
    for command, group in cluster.client.run(parent).values():
        assert "multiprocessing.forkserver" in command
        assert "mnist_xp.cluster.worker" in command
        assert group != os.getpgrp()


def test_a_redone_attempt_uses_the_copies_of_the_parameters_its_workers_hold(cluster):
    """An attempt a fault ended leaves the parameters on the workers it reached: the next
    attempt at the same work uses those copies and sends none; other work sends its own."""
    import numpy as np

    from mnist_xp.cluster.engine import WorkerLeft

    params = [np.ones((3, 2), np.float32)]
    attempts = []

    def fails_once(params):
        attempts.append(cluster._broadcast(params, step=True))
        if len(attempts) == 1:
            raise WorkerLeft("a worker left")
        return attempts[-1]

    before = cluster._out
    with pytest.warns(UserWarning, match="a worker was lost during the work"):
        cluster.retrying(fails_once, params)
    workers = len(cluster.workers)
    assert attempts[1] == attempts[0] and cluster._out - before == workers * 24
    attempts.clear()
    with pytest.warns(UserWarning, match="a worker was lost during the work"):
        cluster.retrying(fails_once, [p.copy() for p in params])  # new work: sent once more
    assert attempts[1] == attempts[0] and cluster._out - before == 2 * workers * 24


def test_a_worker_that_joined_is_sent_the_parameters_without_holding_up_the_step(cluster):
    """A worker new since the last broadcast holds no chunk yet: its copy goes out beside
    the step (counted), and only the others' copies are waited for; the broadcast after
    that one waits for it like any other."""
    import numpy as np

    workers = cluster.workers
    cluster._broadcast([np.zeros(4, np.float32)], step=False)
    cluster._sent_to = workers[1:]  # as if workers[0] had joined since
    before = cluster._out
    copies = cluster._broadcast([np.ones(4, np.float32)], step=True)
    assert sorted(copies) == workers[1:] and cluster._out - before == 16 * len(workers)
    assert sorted(cluster._broadcast([np.ones(4, np.float32)], step=False)) == workers
    cluster._sent_to = ["tls://127.0.0.1:9"]  # every worker new: none holds a chunk, all wait
    assert sorted(cluster._broadcast([np.zeros(4, np.float32)], step=False)) == workers


async def _crash() -> None:
    os._exit(1)


def test_a_worker_that_dies_mid_run_is_replaced_and_the_run_goes_on(tiny_data):
    """Its chunks are built again from their recipes on the worker left (and the one its nanny
    starts); the run ends with NumPy's weights."""
    importorskip("distributed")
    config = Config(hidden=(16,), optimizer="adam", lr=3e-3, steps=8)
    with select_engine("cpu", "dask", workers=2) as backend:
        victim = backend.workers[1]
        steps = []

        def kill_at_step_3() -> bool:
            steps.append(1)
            if len(steps) == 4:  # after step 3 (asked once before step 1): a crash
                backend.client.run(_crash, workers=[victim], wait=False)
            return False

        model, history = train(tiny_data, backend, config, eval_every=4,
                               should_stop=kill_at_step_3)
        assert victim not in backend.workers  # it died; its nanny starts another, which
        backend.client.wait_for_workers(2, timeout=30)  # may join after this short run's end
        assert len(backend.workers) == 2
    reference, _ = train(tiny_data, numpy_backend(), config, eval_every=4)
    _agree(model, reference)
    assert history.steps == 8 and math.isfinite(history.final_loss)


def test_the_command_line_trains_on_a_cluster_and_prints_the_traffic(tiny_dir, capsys):
    importorskip("distributed")
    assert main(["train", "--backend", "dask", "--workers", "2", "--preset", "relu10",
                 "--steps", "5", "--quiet", "--device", "cpu", "--data-dir", str(tiny_dir)]) == 0
    out = capsys.readouterr().out
    assert "(a LocalCluster started here): 2 workers × 1 thread" in out
    assert "network: " in out and "4.00x the " in out and "no data chunk moved" in out


@pytest.mark.parametrize("flags,error,message", [
    (["--workers", "2"], UsageError, "--workers and --scheduler are for --backend dask"),
    (["--backend", "dask", "--workers", "0"], UsageError, "--workers 0: must be at least 1"),
    (["--backend", "dask", "--workers", "2", "--scheduler", "tcp://x:1"], UsageError,
     "give one"),
    (["--backend", "dask", "--workers", "2", "--device", "cuda:1"], UsageError,
     "--device cuda:1 with a cluster: its workers choose their GPUs"),
])
def test_cluster_flags_are_checked(flags, error, message, tiny_dir, capsys):
    assert main(["train", "--preset", "relu10", "--quiet", "--data-dir", str(tiny_dir),
                 *flags]) == 2
    assert message in capsys.readouterr().err


def test_no_scheduler_at_the_address_is_one_line_within_seconds():
    """A port that refuses connections: one line at once, not after distributed's retries."""
    import time

    importorskip("distributed")
    begin = time.perf_counter()
    with pytest.raises(BackendError, match="--scheduler tcp://127.0.0.1:9: nothing listens "
                                           "there \\(connection refused\\)"):
        select_engine("cpu", "dask", scheduler="tcp://127.0.0.1:9")
    assert time.perf_counter() - begin < 5


@pytest.mark.parametrize("address", ["http://127.0.0.1:8786", "ws://host:1", "127.0.0.1:8786"])
def test_only_schemes_dask_speaks_are_accepted(address):
    importorskip("distributed")
    with pytest.raises(BackendError, match="with a scheme Dask speaks \\(tcp, tls, inproc, "
                                           "ucx\\)"):
        select_engine("cpu", "dask", scheduler=address)


@pytest.mark.parametrize("address", ["foo", "tcp://127.0.0.1:notaport"])
def test_a_malformed_scheduler_address_is_one_line(address):
    importorskip("distributed")
    with pytest.raises(BackendError, match=f"--scheduler {address}: not a scheduler's address"):
        select_engine("cpu", "dask", scheduler=address)


def test_a_server_that_never_answers_as_a_scheduler_is_one_line(monkeypatch):
    """A port that accepts connections and stays silent (the dashboard's, a web server):
    distributed's own timeout never fires there; ours does."""
    import socket

    importorskip("distributed")
    monkeypatch.setattr("mnist_xp.cluster.connect.CONNECT_TIMEOUT_S", 1)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        address = f"tcp://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(BackendError, match="something answered, but not as a Dask"):
            select_engine("cpu", "dask", scheduler=address)


def test_work_the_cluster_cannot_redo_stops_the_run_and_keeps_the_checkpoint(
        cluster, tiny_data, tmp_path, monkeypatch):
    """A task whose workers kept dying (KilledWorker): one line, and the checkpoint of the last
    evaluation is the one on disk."""
    from distributed import KilledWorker

    from mnist_xp.cluster import ClusterError

    path = tmp_path / "run.npz"
    steps = []
    real = type(cluster).gradient

    def dies_at_step_5(self, *args):
        steps.append(1)
        if len(steps) == 5:
            raise KilledWorker("worker_gradient-1",
                               types.SimpleNamespace(address="tcp://10.0.0.7:4242"), 3)
        return real(self, *args)

    monkeypatch.setattr(type(cluster), "gradient", dies_at_step_5)
    with pytest.raises(ClusterError, match=r"KilledWorker.*resume from its last checkpoint"):
        train(tiny_data, cluster, Config(hidden=(8,), steps=10), eval_every=2, checkpoint=path)
    assert load_checkpoint(path).step == 4


@pytest.mark.parametrize("to", ["the process", "its process group"])
def test_sigterm_stops_a_cluster_run_with_its_checkpoint(tiny_dir, tmp_path, to):
    """`timeout`, a terminal's Ctrl-C and job schedulers signal the whole process group: the
    LocalCluster's workers, and the server they are forked from, are in groups of their own,
    so the step in flight finishes on the same workers and the checkpoint is written at the
    stop (not only at --checkpoint-every)."""
    importorskip("distributed")
    path = tmp_path / "run.npz"
    process = subprocess.Popen(
        [sys.executable, "-m", "mnist_xp", "train", "--backend", "dask", "--workers", "2",
         "--preset", "relu10", "--steps", "100000", "--device", "cpu", "--quiet",
         "--data-dir", str(tiny_dir), "--checkpoint", str(path), "--checkpoint-every",
         "100000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    try:
        for line in process.stdout:
            if line.startswith("pace:"):
                break
        if to == "the process":
            process.send_signal(signal.SIGTERM)
        else:
            os.killpg(process.pid, signal.SIGTERM)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 143, err
    assert "stopped by SIGTERM after step" in err and "Traceback" not in err
    assert "worker was lost" not in err  # the workers' forkserver is out of the group too
    assert load_checkpoint(path).step >= 2


def _listening(pids: set[int]) -> list[str]:
    """The local addresses these processes listen on (ss -ltnp)."""
    out = subprocess.run(["ss", "-ltnp"], capture_output=True, text=True).stdout
    return [line.split()[3] for line in out.splitlines()
            if any(f"pid={pid}," in line for pid in pids)]


def test_a_local_cluster_lets_no_one_in(cluster, tmp_path):
    """Its scheduler, workers and HTTP servers listen on loopback only (ss -ltnp); it speaks
    TLS with this run's credentials, so a client without them cannot join it or submit work;
    and without --dashboard its HTTP servers serve no pages (no worker list, logs or stacks)."""
    import urllib.error
    import urllib.request

    if not shutil.which("ss"):
        pytest.skip("ss (iproute2) is not installed")
    pids = {os.getpid(), *(p for p in cluster.client.run(os.getpid).values())}
    addresses = _listening(pids)
    assert len(addresses) >= 3 and all(a.startswith("127.0.0.1:") for a in addresses), addresses
    scheduler = cluster.client.scheduler.address
    assert scheduler.startswith("tls://127.0.0.1:")
    marker = tmp_path / "intruder-ran"
    for address in (scheduler, scheduler.replace("tls://", "tcp://")):
        attempt = (f"from distributed import Client\n"
                   f"client = Client({address!r}, timeout=5)\n"
                   f"client.run(lambda: open({str(marker)!r}, 'w').write('in'))\n")
        intruder = subprocess.run([sys.executable, "-c", attempt], capture_output=True,
                                  timeout=120)
        assert intruder.returncode != 0 and not marker.exists()
    port = cluster.client.scheduler_info()["services"].get("dashboard")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/info/main/workers.html", timeout=5)
    assert refused.value.code == 404


def _dask_scheduler(scheme, *flags, env=None):
    """`dask scheduler` on a free loopback port, once it accepts connections: (process,
    address)."""
    import socket
    import time

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(["dask", "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                *flags], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while time.time() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.2)
    return process, f"{scheme}://127.0.0.1:{port}"


def _credentials(folder):
    """Two sets of TLS files made for the test (a CA that signs a certificate, and its key)."""
    from distributed.security import Security

    made = {}
    for name in ("good", "other"):
        security = Security.temporary()
        files = []
        for part, text in (("ca", security.tls_ca_file), ("cert", security.tls_client_cert),
                           ("key", security.tls_client_key)):
            path = folder / f"{name}-{part}.pem"
            path.write_text(text)
            files.append(path)
        made[name] = files
    return made


def test_tls_end_to_end_on_a_cluster_started_with_dasks_own_command_line(tmp_path, tiny_dir,
                                                                          capsys):
    """`dask scheduler` and `dask worker` with certificates the test makes: the run trains
    with --tls-ca/--tls-cert/--tls-key, and wrong or missing credentials are one line each."""
    import time

    importorskip("distributed")
    creds = _credentials(tmp_path)
    tls = ["--tls-ca-file", str(creds["good"][0]), "--tls-cert", str(creds["good"][1]),
           "--tls-key", str(creds["good"][2]), "--no-dashboard"]
    scheduler, address = _dask_scheduler("tls", "--protocol", "tls", *tls)
    worker = None
    try:
        worker = subprocess.Popen(["dask", "worker", address, "--nthreads", "1", *tls],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        flags = ["train", "--backend", "dask", "--scheduler", address, "--preset", "relu10",
                 "--steps", "5", "--quiet", "--device", "cpu", "--data-dir", str(tiny_dir)]
        good = ["--tls-ca", str(creds["good"][0]), "--tls-cert", str(creds["good"][1]),
                "--tls-key", str(creds["good"][2])]
        deadline = time.time() + 60
        while main([*flags, *good]) != 0:
            assert time.time() < deadline, capsys.readouterr().err  # the worker joins
            time.sleep(1)
        assert "done: 5 steps" in capsys.readouterr().out
        other = ["--tls-ca", str(creds["other"][0]), "--tls-cert", str(creds["other"][1]),
                 "--tls-key", str(creds["other"][2])]
        for extra, message in ((other, "the TLS handshake failed"),
                               ([], "needs this client's credentials: --tls-ca FILE"),
                               (good[:4] + ["--tls-key", str(tmp_path / "absent.pem")],
                                "--tls-key " + str(tmp_path / "absent.pem") + ": no such file"),
                               (good[:2], "--tls-ca, --tls-cert and --tls-key go together")):
            assert main([*flags, *extra]) == 2
            err = capsys.readouterr().err
            assert message in err and err.count("\n") == 1, err
    finally:
        for process in (worker, scheduler):
            if process is not None:
                process.terminate()
                process.wait(timeout=30)


@contextlib.contextmanager
def _dask_cli_cluster(workers, *worker_flags):
    """`dask scheduler` (work stealing off) and `dask worker`s with these flags: its address,
    once the workers have joined."""
    from distributed import Client

    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    scheduler, address = _dask_scheduler("tcp", "--no-dashboard", env={
        **os.environ, "DASK_DISTRIBUTED__SCHEDULER__WORK_STEALING": "False"})
    processes = [scheduler]
    try:
        processes += [subprocess.Popen(["dask", "worker", address, "--nthreads", "1",
                                        "--no-dashboard", *worker_flags], **quiet)
                      for _ in range(workers)]
        with Client(address, timeout=30) as client:
            client.wait_for_workers(workers, timeout=60)
        yield address
    finally:
        for process in processes:
            process.kill()
            process.wait(timeout=30)


@contextlib.contextmanager
def _two_workers(kind):
    """An engine on two single-thread workers: a LocalCluster (--workers 2), or a cluster
    started with Dask's own command line, with or without a nanny to replace a lost worker."""
    if kind == "--workers":
        with select_engine("cpu", "dask", workers=2) as engine:
            yield engine
    else:
        with _dask_cli_cluster(2, *kind.split()[2:]) as address, \
                select_engine("cpu", "dask", scheduler=address) as engine:
            yield engine


@pytest.mark.parametrize("kind", ["--workers", "dask worker", "dask worker --no-nanny"])
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_a_worker_lost_during_a_step_is_survived(kind, signum):
    """A worker killed 50 ms into step 5 (a step here takes a few hundred ms): the parameters
    sent to it are lost with it, the step is redone on the workers left with its rows rebuilt
    from their recipes, one warning says so, and the run ends with NumPy's weights."""
    import threading

    from mnist_xp.synthetic import synthetic_digits

    importorskip("distributed")
    data = synthetic_digits(20_000, 1_000)
    config = Config(hidden=(256,), optimizer="adam", lr=3e-3, steps=10)
    with _two_workers(kind) as engine:
        victim = list(engine.client.run(os.getpid).values())[1]
        asked = []

        def kill_in_step_5():
            asked.append(1)
            if len(asked) == 5:  # asked before step 1, then after steps 1..4
                threading.Timer(0.05, os.kill, (victim, signum)).start()

        with pytest.warns(UserWarning, match="a worker was lost during the work") as caught:
            model, history = train(data, engine, config, eval_every=5, log_every=1,
                                   should_stop=kill_in_step_5)
        assert len([w for w in caught if "worker was lost" in str(w.message)]) == 1
    assert history.steps == 10
    reference, _ = train(data, numpy_backend(), config, eval_every=5)
    _agree(model, reference)


def test_a_worker_that_joins_mid_run_takes_a_share_of_the_rows():
    """A third worker joins after step 3 of a run on two: it is given a third of the chunks
    (built there from their recipes), computes gradients from then on, and the run ends with
    NumPy's weights."""
    from mnist_xp.synthetic import synthetic_digits

    importorskip("distributed")
    data = synthetic_digits(12_000, 600)
    config = Config(hidden=(64,), optimizer="adam", lr=3e-3, steps=15)
    with select_engine("cpu", "dask", workers=2) as engine:
        first = set(engine.workers)
        asked = []

        def join_after_step_3():
            asked.append(1)
            if len(asked) == 4:
                engine.cluster.scale(3)
                engine.client.wait_for_workers(3, timeout=60)

        model, _ = train(data, engine, config, eval_every=15, log_every=1,
                         should_stop=join_after_step_3)
        (newcomer,) = set(engine.workers) - first

        def gradients_computed(dask_worker):
            return len({entry[0] for entry in dask_worker.state.log
                        if str(entry[0]).startswith("worker_gradient") and "memory" in entry})

        computed = engine.client.run(gradients_computed, workers=[newcomer])[newcomer]
        traffic = engine.traffic()
    assert computed >= 5, computed  # of the 11 steps after it joined
    # its share's rows went out again from here, inside their recipes, and are said so
    row_bytes = data.train_images[0].nbytes + data.train_labels[0].nbytes
    assert traffic.reshipped > 0 and traffic.reshipped % (2 * row_bytes) == 0
    assert f"{traffic.reshipped / 1e3:.0f} kB of rows sent again" in traffic.describe(1)
    reference, _ = train(data, numpy_backend(), config, eval_every=15)
    _agree(model, reference)


def test_a_lost_scheduler_is_one_line_and_its_checkpoint_resumes(tiny_dir, tiny_data, tmp_path):
    """`dask scheduler` and two `dask worker`s; the scheduler is killed mid-run: one line,
    exit 1, no traceback, the checkpoint of the last finished step written; --resume on a
    new cluster then ends with the weights of the run straight through on NumPy."""

    from mnist_xp.modelfile import read_model_file

    importorskip("distributed")
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    scheduler, address = _dask_scheduler("tcp", "--no-dashboard", env={
        **os.environ, "DASK_DISTRIBUTED__SCHEDULER__WORK_STEALING": "False"})
    workers = []
    try:
        workers = [subprocess.Popen(["dask", "worker", address, "--nthreads", "1",
                                     "--no-dashboard"], **quiet) for _ in range(2)]
        path = tmp_path / "run.npz"
        run = subprocess.Popen(
            [sys.executable, "-m", "mnist_xp", "train", "--backend", "dask", "--scheduler",
             address, "--preset", "relu10", "--steps", "100000", "--device", "cpu", "--quiet",
             "--data-dir", str(tiny_dir), "--checkpoint", str(path), "--checkpoint-every",
             "100000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        for line in run.stdout:
            if line.startswith("pace:"):
                break
        scheduler.kill()
        _, err = run.communicate(timeout=120)
    finally:
        for process in (*workers, scheduler):
            process.kill()
            process.wait(timeout=30)
    assert run.returncode == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert f"the scheduler at {address} was lost" in lines[0]
    assert f"was saved to {path}: resume from its last checkpoint" in lines[0]
    step = read_model_file(path).meta["step"]
    assert step >= 5
    assert main(["train", "--backend", "dask", "--workers", "2", "--resume", str(path),
                 "--steps", str(step + 3), "--device", "cpu", "--quiet", "--data-dir",
                 str(tiny_dir), "--save", str(tmp_path / "resumed.npz")]) == 0
    straight, _ = train(tiny_data, numpy_backend(), "relu10", steps=step + 3)
    for got, want in zip(read_model_file(tmp_path / "resumed.npz").params,
                         straight.host_params()):
        assert_close(got, want, "float32", scale=10)
