"""Learning-rate schedules and Nesterov momentum, against numbers worked out by hand, on every
backend, and exactly resumable."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mnist_xp import Config, train
from mnist_xp.backends.numpy import NUMPY_TAIL
from mnist_xp.checkpoint import load_checkpoint
from mnist_xp.errors import Interrupted, UsageError
from mnist_xp.optim import make_optimizer
from mnist_xp.schedules import Schedule

from conftest import assert_close

# f(t) for t = 1..10, worked out from the definitions in mnist_xp/schedules.py
BY_HAND = {
    # warm-up over 2 steps (1/2, then 1), then ½(1 + cos(π(t - 3)/8)) for t = 3..10
    Schedule("cosine", warmup=2, total=10): [
        0.5, 1.0, 1.0, 0.5 * (1 + math.cos(math.pi / 8)), 0.5 * (1 + math.cos(math.pi / 4)),
        0.5 * (1 + math.cos(3 * math.pi / 8)), 0.5, 0.5 * (1 + math.cos(5 * math.pi / 8)),
        0.5 * (1 + math.cos(3 * math.pi / 4)), 0.5 * (1 + math.cos(7 * math.pi / 8))],
    # ×0.1 once t > 5, ×0.01 once t > 7.5
    Schedule("step", total=10): [1, 1, 1, 1, 1, 0.1, 0.1, 0.01, 0.01, 0.01],
    # warm-up over 4 steps: t/4
    Schedule("constant", warmup=4, total=10): [0.25, 0.5, 0.75, 1, 1, 1, 1, 1, 1, 1],
    Schedule(): [1.0] * 10,
}


@pytest.mark.parametrize("schedule", BY_HAND, ids=lambda s: f"{s.kind}-w{s.warmup}")
def test_each_schedule_gives_the_factors_worked_out_by_hand(backend_dtype, schedule):
    backend, dtype = backend_dtype
    got = [float(backend.to_numpy(schedule.factor(backend.asarray(np.asarray(t, dtype=dtype)))))
           for t in range(1, 11)]
    assert_close(np.array(got), np.array(BY_HAND[schedule]), dtype)


@pytest.mark.parametrize("fused", [None, NUMPY_TAIL], ids=["array-api", "numpy"])
@pytest.mark.parametrize("name", ["sgd", "momentum", "nesterov", "adam"])
def test_each_optimizer_steps_at_the_scheduled_rate(name, fused):
    """Three steps of each optimizer with a cosine schedule and warm-up against the update
    written out here, one scalar parameter, gradients 1, 2, 3: the Array API updates and
    NumPy's own (backends.numpy)."""
    schedule = Schedule("cosine", warmup=1, total=3)
    lr, mu = 0.1, 0.9
    optimizer = make_optimizer(name, lr, momentum=mu, fused=fused, schedule=schedule)
    params = [np.array([1.0])]
    state = optimizer.init(params)
    want, v, m, s = 1.0, 0.0, 0.0, 0.0
    for t, g in zip((1, 2, 3), (1.0, 2.0, 3.0)):
        params, state = optimizer.update(params, [np.array([g])], state)
        rate = lr * [1.0, 1.0, 0.5][t - 1]  # warm-up 1/1, then ½(1 + cos(0)), ½(1 + cos(π/2))
        if name == "sgd":
            want -= rate * g
        elif name == "momentum":
            v = mu * v + g
            want -= rate * v
        elif name == "nesterov":
            v = mu * v + g
            want -= rate * (g + mu * v)
        else:
            m = 0.9 * m + 0.1 * g
            s = 0.999 * s + 0.001 * g * g
            want -= rate * (m / (1 - 0.9**t)) / (math.sqrt(s / (1 - 0.999**t)) + 1e-8)
        assert params[0][0] == pytest.approx(want, rel=1e-12), (name, t)


def test_a_scheduled_run_stopped_and_resumed_equals_the_run_straight_through(tiny_data,
                                                                              tmp_path):
    """Nesterov momentum, cosine decay after a warm-up, mini-batches: stopped after step 7 of
    14 and resumed, the weights are those of the run straight through, bit for bit (the
    schedule follows the optimizer's own step count, which the checkpoint keeps)."""
    from mnist_xp.backends import numpy_backend

    backend = numpy_backend()
    config = Config(hidden=(16,), optimizer="nesterov", lr=0.05, batch_size=64, steps=14,
                    schedule="cosine", warmup=3)
    straight, _ = train(tiny_data, backend, config, eval_every=7)
    path = tmp_path / "half.npz"
    asked = []

    def after_step_7():
        asked.append(1)
        return len(asked) == 8 and "test"  # asked before step 1, then after each step

    with pytest.raises(Interrupted):
        train(tiny_data, backend, config, eval_every=7, checkpoint=path, should_stop=after_step_7)
    checkpoint = load_checkpoint(path)
    assert checkpoint.step == 7
    resumed, _ = train(tiny_data, backend, config, eval_every=7, resume=checkpoint)
    for got, want in zip(resumed.host_params(), straight.host_params()):
        np.testing.assert_array_equal(got, want)
    moved = train(tiny_data, backend, config.replace(schedule="constant"), eval_every=7)[0]
    assert not np.array_equal(moved.host_params()[0], straight.host_params()[0])


def test_bad_schedules_are_one_line_errors():
    with pytest.raises(UsageError, match="unknown schedule 'linear'"):
        Config(schedule="linear")
    with pytest.raises(UsageError, match="warm-up must be >= 0"):
        Config(warmup=-1)
    assert "cosine decay after a 3-step warm-up" in Config(schedule="cosine", warmup=3).describe()


def test_the_record_preset_runs_from_the_command_line(tiny_dir, capsys):
    """Its pieces together (distortions, Nesterov, warm-up and cosine, mini-batches): a few
    steps of it run and say what they are."""
    from mnist_xp.cli import main

    assert main(["train", "--preset", "record", "--steps", "3", "--hidden", "32,32",
                 "--device", "cpu", "--data-dir", str(tiny_dir), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "nesterov lr=0.05 (cosine decay after a 469-step warm-up)" in out
    assert "elastic distortions" in out and "done: 3 steps" in out
