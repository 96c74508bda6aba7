"""Checkpoints and resume: the same weights as a run straight through, on every backend;
Ctrl-C saves and exits 130; bad checkpoint files give one-line errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

from mnist_xp import Config, train
from mnist_xp.backends import numpy_backend
from mnist_xp.checkpoint import load_checkpoint
from mnist_xp.errors import DataError, DivergenceError, Interrupted, LostWork, UsageError
from mnist_xp.step import LocalEngine

from conftest import assert_close

CASES = {
    "full-batch adam": Config(hidden=(16,), optimizer="adam", lr=3e-3, weight_decay=1e-4),
    "mini-batch momentum": Config(hidden=(16,), optimizer="momentum", lr=0.05, batch_size=70),
    "mini-batch sgd": Config(hidden=(8, 8), optimizer="sgd", lr=0.1, batch_size=64),
}


@pytest.mark.parametrize("case", CASES)
def test_resume_in_the_middle_equals_straight_through(backend_dtype, tiny_data, tmp_path, case):
    backend, dtype = backend_dtype
    config = CASES[case].replace(dtype=dtype, steps=14)
    straight, history = train(tiny_data, backend, config, eval_every=7)
    path = tmp_path / "half.npz"
    train(tiny_data, backend, config.replace(steps=7), eval_every=7, checkpoint=path)
    checkpoint = load_checkpoint(path)
    assert checkpoint.step == 7 and checkpoint.optimizer_t == 7
    host_arrays = checkpoint.params + [a for arrays in checkpoint.optimizer_state.values()
                                       for a in arrays]
    kept = [a.copy() for a in host_arrays]
    for a in host_arrays:  # read-only host arrays must work: the device gets copies
        a.flags.writeable = False
    resumed, resumed_history = train(tiny_data, backend, config, eval_every=7,
                                     resume=checkpoint, steps=14)
    for got, want in zip(resumed.host_params(), straight.host_params()):
        if backend.on_gpu:  # GPU libraries may sum in a different order from run to run
            assert_close(got, want, dtype, scale=10)
        else:  # the same operations on the same numbers
            np.testing.assert_array_equal(got, want)
    for a, before in zip(host_arrays, kept):  # training never writes into the caller's arrays
        np.testing.assert_array_equal(a, before)
    assert [r["step"] for r in resumed_history.records] == [7, 14]
    assert resumed_history.steps == 14
    if backend.on_gpu:
        assert_close(resumed_history.final_loss, history.final_loss, dtype)
    else:
        assert resumed_history.final_loss == history.final_loss


def test_checkpoint_every_k_steps_and_stop_request(tiny_data, tmp_path):
    path = tmp_path / "run.npz"
    calls = []

    def stop_after_five() -> bool:  # asked once when set up, then after every step
        calls.append(1)
        return len(calls) == 6
    with pytest.raises(Interrupted, match=f"after step 5 of 50: checkpoint saved to {path}"):
        train(tiny_data, numpy_backend(), "relu10", steps=50, checkpoint=path,
              checkpoint_every=3, should_stop=stop_after_five)
    assert Interrupted.exit_code == 130
    assert load_checkpoint(path).step == 5  # the stop wrote one after step 5, not step 3's


class _StepThatLosesItsWorkers:
    """The real step, until call `at`: then the stop signal reaches the cluster's workers too
    (Slurm's scancel signals every process of the job) and the step in flight is lost."""

    def __init__(self, real, at, signalled):
        self.real, self.at, self.signalled, self.calls = real, at, signalled, 0

    def __getattr__(self, name):
        return getattr(self.real, name)

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.at:
            self.signalled.append("SIGTERM")
            raise LostWork("the cluster lost work it could not redo")
        return self.real(*args, **kwargs)


@pytest.mark.parametrize("stop", [True, False])
def test_a_step_lost_to_the_stop_signal_saves_the_step_before(tiny_data, tmp_path, stop):
    """Stopped, or the engine's work lost for good: the checkpoint holds the last finished step
    (its batch position included), and resuming it gives the run straight through."""
    backend = LocalEngine(numpy_backend())
    config = Config(hidden=(16,), optimizer="adam", lr=3e-3, batch_size=70, steps=10)
    signalled = []
    real_train_step = backend.train_step
    backend.train_step = lambda *args, **kw: _StepThatLosesItsWorkers(
        real_train_step(*args, **kw), 6, signalled)
    path = tmp_path / "run.npz"
    expected = (Interrupted, "stopped by SIGTERM after step 5 of 10: checkpoint saved") if stop \
        else (LostWork, "the cluster lost work it could not redo; the run stopped at step 6 of "
                        "10; the checkpoint of step 5 was saved")
    with pytest.raises(expected[0], match=expected[1]):
        train(tiny_data, backend, config, eval_every=5, checkpoint=path, checkpoint_every=100,
              should_stop=lambda: (signalled[-1] if signalled else None) if stop else None)
    checkpoint = load_checkpoint(path)  # either way, the last finished step's
    assert checkpoint.step == 5
    backend.train_step = real_train_step
    straight, _ = train(tiny_data, backend, config, eval_every=5)
    resumed, _ = train(tiny_data, backend, config, eval_every=5, resume=checkpoint)
    for got, want in zip(resumed.host_params(), straight.host_params()):
        np.testing.assert_array_equal(got, want)


def test_resume_refuses_config_changes_and_finished_runs(tiny_data, tmp_path):
    path = tmp_path / "run.npz"
    train(tiny_data, numpy_backend(), "relu10", steps=4, checkpoint=path)
    checkpoint = load_checkpoint(path)
    with pytest.raises(UsageError, match="only --steps and --epochs may change, not lr"):
        train(tiny_data, numpy_backend(), resume=checkpoint, steps=8, lr=0.1)
    with pytest.raises(UsageError, match="already at step 4 of 4"):
        train(tiny_data, numpy_backend(), resume=checkpoint)


def _rewrite(path, target, change):
    with np.load(path, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    change(arrays)
    np.savez(target, **arrays)


@pytest.mark.parametrize("damage,message", [
    (lambda a: a.pop("m0"), "state 'm' is missing"),
    (lambda a: a.__setitem__("v1", a["v1"][:3]), "state 'v' is missing or does not match"),
    (lambda a: a.__setitem__("param0", a["param0"].astype(np.float64)), "not all float32"),
    (lambda a: a.__setitem__("param2", a["param2"].T), "shapes"),
    (lambda a: a.__setitem__("meta", np.array(json.dumps(
        {**json.loads(str(a["meta"])), "format_version": 99}))), "format version 99"),
    (lambda a: a.__setitem__("meta", np.array(json.dumps(
        {k: v for k, v in json.loads(str(a["meta"])).items() if k != "step"}))), "bookkeeping"),
    (lambda a: [a.pop(k) for k in list(a) if k[0] in "mv" and k[1:].isdigit()] and a.__setitem__(
        "meta", np.array(json.dumps({**json.loads(str(a["meta"])), "kind": "model"}))),
     "not a checkpoint"),
    (lambda a: a.__setitem__("meta", np.array(json.dumps(
        {**json.loads(str(a["meta"])), "kind": "model"}))), "unknown member 'm0'"),
    (lambda a: a.__setitem__("extra", np.zeros(3)), "unknown member 'extra'"),
    (lambda a: a.__setitem__("meta", np.array(json.dumps(
        {**json.loads(str(a["meta"])), "config": {**json.loads(str(a["meta"]))["config"],
                                                  "hidden": "ab"}}))),
     "the field 'hidden' is not a list of layer sizes"),
    (lambda a: a.__setitem__("meta", np.array(json.dumps(
        {**json.loads(str(a["meta"])), "history": [{"loss": 1.0}]}))),
     "the field 'history' is not a list of evaluations"),
    (lambda a: a.__setitem__("meta", np.array(json.dumps(
        {**json.loads(str(a["meta"])), "history": "abc"}))),
     "the field 'history' is not a list of evaluations"),
    (lambda a: a.__setitem__("meta", np.array(json.dumps(
        {**json.loads(str(a["meta"])), "config": {**json.loads(str(a["meta"]))["config"],
                                                  "seed": float("inf")}}))),
     "Infinity is not a number JSON allows"),
    (lambda a: a.__setitem__("meta", np.array(json.dumps(
        {**json.loads(str(a["meta"])), "step": "ab"}))),
     "the field 'step' is not a step number"),
    (lambda a: a.__setitem__("meta", np.array(json.dumps(
        {**json.loads(str(a["meta"])), "batches": {"rng": {"state": 1}, "position": 3}}))),
     "the field 'batches.rng' is not a generator state"),
    (lambda a: a["param1"].__setitem__(0, np.nan), "param1 hold NaN or infinity"),
    (lambda a: a["v0"].__setitem__((0, 0), np.inf), "v0 hold NaN or infinity"),
    (lambda a: a.__setitem__("meta", np.array(json.dumps(
        {**json.loads(str(a["meta"])), "input": "32x32 RGB"}))),
     "expects input prepared as '32x32 RGB', and this mnist-xp prepares '28x28 grayscale"),
])
def test_bad_checkpoints_are_named_and_explained(tiny_data, tmp_path, damage, message):
    path = tmp_path / "run.npz"
    train(tiny_data, numpy_backend(), Config(hidden=(8,), optimizer="adam", steps=2),
          checkpoint=path)
    bad = tmp_path / "bad.npz"
    _rewrite(path, bad, damage)
    with pytest.raises(DataError, match=message) as caught:
        load_checkpoint(bad)
    assert str(caught.value).startswith(str(bad)) and "\n" not in str(caught.value)


def test_pickled_and_garbage_files_are_refused(tmp_path):
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, meta=np.array([{"format_version": 1}], dtype=object))
    with pytest.raises(DataError, match="pickled.npz: not an mnist-xp model file"):
        load_checkpoint(pickled)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match="garbage.npz: not an mnist-xp model file"):
        load_checkpoint(garbage)
    with zipfile.ZipFile(tmp_path / "empty.npz", "w"):
        pass
    with pytest.raises(DataError, match="empty.npz: not an mnist-xp model file"):
        load_checkpoint(tmp_path / "empty.npz")


@pytest.mark.parametrize("signum,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_or_sigterm_saves_a_checkpoint_and_exits_128_plus_it(tiny_dir, tmp_path, signum,
                                                                     status):
    """SIGTERM is what timeout, Slurm, Kubernetes and docker stop send: it stops like Ctrl-C."""
    path = tmp_path / "run.npz"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "mnist_xp", "train", "--preset", "relu10", "--steps", "1000000",
         "--device", "cpu", "--data-dir", str(tiny_dir), "--quiet", "--checkpoint", str(path),
         "--checkpoint-every", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 60
    while not path.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert path.exists(), process.communicate()[1]
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == status, err
    name = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
    assert f"stopped by {name} after step " in err and f": checkpoint saved to {path}" in err
    assert "Traceback" not in err
    step = load_checkpoint(path).step
    assert step >= 1
    resumed = subprocess.run(
        [sys.executable, "-m", "mnist_xp", "train", "--resume", str(path), "--steps",
         str(step + 3), "--device", "cpu", "--data-dir", str(tiny_dir), "--quiet"],
        capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {path} at step {step}" in resumed.stdout


def test_a_stop_without_a_checkpoint_says_nothing_was_saved(tiny_dir):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "mnist_xp", "train", "--preset", "relu10", "--steps", "1000000",
         "--device", "cpu", "--data-dir", str(tiny_dir), "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert process.stdout.readline().startswith("preset relu10")
    for line in process.stdout:  # the pace line comes after two steps: training is under way
        if line.startswith("pace:"):
            break
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    assert "nothing was saved (--checkpoint FILE.npz keeps a stopped run)" in err
    assert err.strip().splitlines()[-1].startswith("error: stopped by SIGTERM after step")


def test_a_diverging_run_never_writes_a_non_finite_checkpoint(tiny_data, tmp_path):
    """Checkpointing every step while the loss runs away: the run ends in one DivergenceError
    naming the checkpoint on disk, and that file holds only finite numbers (it loads)."""
    path = tmp_path / "run.npz"
    with pytest.raises(DivergenceError, match=r"the run diverged; .*run.npz holds step \d+"):
        train(tiny_data, numpy_backend(), "relu10", lr=1e30, steps=30, log_every=1,
              checkpoint=path, checkpoint_every=1)
    saved = load_checkpoint(path)
    assert all(np.isfinite(p).all() for p in saved.params)


def test_weights_that_are_not_finite_are_never_written(tiny_data, tmp_path):
    model, _ = train(tiny_data, numpy_backend(), "relu10", steps=2)
    model.params[2] = model.params[2] * np.nan
    with pytest.raises(DivergenceError, match="param2 hold NaN or infinity, so nothing was"):
        model.save(tmp_path / "m.npz")
    assert not (tmp_path / "m.npz").exists()


def test_a_stop_while_setting_up_stops_at_once(tiny_data, tmp_path):
    """SIGTERM while the data is being placed (a cluster's chunks, a big --augment): no
    waiting for a first step that may be minutes away; nothing is saved."""
    script = tmp_path / "slow_setup.py"
    script.write_text(
        "import sys, time\n"
        "import mnist_xp.step as step\n"
        "real = step.to_device\n"
        "def slow(*args, **kwargs):\n"
        "    print('placing', flush=True)\n"
        "    time.sleep(60)\n"
        "    return real(*args, **kwargs)\n"
        "step.to_device = slow\n"
        "from mnist_xp.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n")
    from helpers import write_dataset

    write_dataset(tmp_path / "tiny", tiny_data)
    process = subprocess.Popen(
        [sys.executable, str(script), "train", "--preset", "relu10", "--device", "cpu",
         "--quiet", "--data-dir", str(tmp_path / "tiny"), "--checkpoint",
         str(tmp_path / "run.npz")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in process.stdout:
        if line.startswith("placing"):
            break
    begin = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    assert time.monotonic() - begin < 10
    assert err.strip() == "stopped at once by SIGTERM: nothing more was saved"
    assert not (tmp_path / "run.npz").exists()


@pytest.mark.parametrize("signum,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_second_signal_during_a_step_stops_at_once(tiny_data, tmp_path, signum, status):
    """The first Ctrl-C or SIGTERM waits for the step; a second one, during that step, does
    not: the checkpoint on disk stays the last one written."""
    script = tmp_path / "slow_step.py"
    script.write_text(
        "import sys, time\n"
        "import mnist_xp.step as step\n"
        "real, calls = step.TrainStep.__call__, []\n"
        "def slow(*args, **kwargs):\n"
        "    calls.append(1)\n"
        "    if len(calls) == 4:\n"
        "        print('slow step', flush=True)\n"
        "        time.sleep(60)\n"
        "    return real(*args, **kwargs)\n"
        "step.TrainStep.__call__ = slow\n"
        "from mnist_xp.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n")
    from helpers import write_dataset

    write_dataset(tmp_path / "tiny", tiny_data)
    path = tmp_path / "run.npz"
    process = subprocess.Popen(
        [sys.executable, str(script), "train", "--preset", "relu10", "--device", "cpu",
         "--quiet", "--data-dir", str(tmp_path / "tiny"), "--checkpoint", str(path),
         "--checkpoint-every", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in process.stdout:
        if line.startswith("slow step"):
            break
    name = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
    process.send_signal(signum)
    assert process.stderr.readline() == "\n"  # the line, below the progress bar
    assert process.stderr.readline() == (f"{name}: stopping after this step ({name} again to "
                                         f"stop at once)\n")
    begin = time.monotonic()
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == status, err
    assert time.monotonic() - begin < 10  # not the 60 s the step still had to go
    assert err.strip() == f"stopped at once by {name}: nothing more was saved"
    assert load_checkpoint(path).step == 3  # the last step that ended
