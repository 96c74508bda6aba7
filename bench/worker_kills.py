"""Kill one of three workers at a random moment of a run, RUNS runs in a row, and say for each
whether it finished with NumPy's accuracy and how many steps' worth of time the fault cost:

    python bench/worker_kills.py [RUNS] [--signal KILL|TERM] [--workers 3] [--steps]

Each run trains 784-128-10 with Adam, full batch, for 30 steps on 20,000 synthetic digits on
a LocalCluster of 3 single-thread workers (--workers 3); a timer kills one worker, chosen at
random, at a random moment between the start of step 4 and the end of step 27. Its nanny
starts a new worker, which takes its share of the rows back during the run.

The host is shared and noisy: two runs without a fault differ by up to two steps' time. So
what a fault cost is measured inside its run: the time each step took (from one end of a
step to the next, a failed attempt included; the last step's without the run's one
evaluation, which follows it) less the run's median step, summed over its steps, in steps of
that median. Each run with a fault is paired with one without, just
before it on the same warm workers, whose sum (the noise floor: steps are never faster than
their median by much, sometimes slower) is printed beside it. Before the pair, a short
untimed run lets the new worker of the previous fault import what it needs. `--steps`
prints each step's time in the runs with a fault, the step the kill hit marked with *.
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import threading
import time
import warnings

from mnist_xp import Config, train
from mnist_xp.backends import numpy_backend
from mnist_xp.engines import select_engine
from mnist_xp.synthetic import synthetic_digits

STEPS = 30
WORKERS = 3


def timed(data, engine, config, kill_after=None, victim=None, signum=signal.SIGKILL):
    """(excess, median step, last test accuracy, steps redone, the steps in ms with the one
    the kill hit marked) of one run, a worker killed on a timer: excess is the time its steps
    took beyond the run's median step, in steps."""
    ends, killed = [], []

    def kill() -> None:
        killed.append(time.perf_counter())
        os.kill(victim, signum)

    timer = threading.Timer(kill_after, kill) if victim else None

    def step_ended() -> None:  # asked once before the first step, then after each step
        ends.append(time.perf_counter())
        if len(ends) == 1 and timer:
            timer.start()

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _, history = train(data, engine, config, eval_every=STEPS, should_stop=step_ended)
    finally:
        if timer:
            timer.cancel()
    steps = [b - a for a, b in zip(ends, ends[1:])]
    steps[-1] -= history.last["seconds"] - history.last["train_seconds"]  # not a step's time
    typical = statistics.median(steps)
    excess = sum(d - typical for d in steps) / typical
    redone = sum("worker was lost" in str(w.message) for w in caught)
    shown = " ".join(f"{'*' if killed and a <= killed[0] < b else ''}{1e3 * d:.0f}"
                     for a, b, d in zip(ends, ends[1:], steps))
    return excess, typical, history.last["test_accuracy"], redone, shown


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=int, nargs="?", default=20)
    parser.add_argument("--signal", choices=("KILL", "TERM"), default="KILL")
    parser.add_argument("--workers", type=int, default=WORKERS,
                        help=f"single-thread workers (default: {WORKERS})")
    parser.add_argument("--steps", action="store_true",
                        help="print each step's ms in the runs with a fault (* the one hit)")
    args = parser.parse_args()
    signum = getattr(signal, f"SIG{args.signal}")
    data = synthetic_digits(20_000, 2_000)
    config = Config(hidden=(128,), optimizer="adam", lr=3e-3, steps=STEPS)
    _, reference = train(data, numpy_backend(), config, eval_every=STEPS)
    want = reference.last["test_accuracy"]
    rng = random.Random(0)
    costs, failures, floors = [], 0, []
    with select_engine("cpu", "dask", workers=args.workers) as engine:
        print(f"{engine}; NumPy's test accuracy {want:.4f}", flush=True)
        for run in range(1, args.runs + 1):
            deadline = time.time() + 60  # the nanny's new worker, then its first imports
            while len(engine.workers) < args.workers and time.time() < deadline:
                time.sleep(0.2)
            train(data, engine, config.replace(steps=2), eval_every=2)
            floor, per_step, _, _, _ = timed(data, engine, config)
            floors.append(floor)
            victim = rng.choice(list(engine.client.run(os.getpid).values()))
            delay = rng.uniform(3 * per_step, (STEPS - 3) * per_step)
            try:
                lost, _, got, redone, shown = timed(data, engine, config, delay, victim,
                                                    signum)
            except Exception as exc:  # a run the fault ended counts, and the next one goes on
                failures += 1
                print(f"run {run:2d}: kill at {delay:5.2f} s: ENDED ({type(exc).__name__}: "
                      f"{str(exc).splitlines()[0][:120]})", flush=True)
                continue
            ok = got == want and lost <= 2
            failures += not ok
            costs.append(lost)
            print(f"run {run:2d}: kill {delay:5.2f} s after step 1 began, {redone} step(s) redone, "
                  f"accuracy {got:.4f} ({'= NumPy' if got == want else 'DIFFERS'}): the "
                  f"fault cost {lost:.1f} steps of time (a run without one: {floor:.1f}; "
                  f"{per_step * 1e3:.0f} ms a step){'' if ok else '  <- FAILED'}", flush=True)
            if args.steps:
                print(f"        steps (ms): {shown}", flush=True)
    print(f"{args.runs - failures} of {args.runs} runs finished with NumPy's accuracy within "
          f"two steps' time of the fault; the cost: median {statistics.median(costs):.1f}, "
          f"worst {max(costs):.1f} steps (runs without a fault: median "
          f"{statistics.median(floors):.1f}, worst {max(floors):.1f})")
    raise SystemExit(1 if failures else 0)
