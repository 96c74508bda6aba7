"""Kill one of three workers at a random moment of a run, RUNS runs in a row, and say for each
whether it finished with NumPy's accuracy and how many steps' worth of time the fault cost:

    python bench/worker_kills.py [RUNS] [--signal KILL|TERM]

Each run trains 784-128-10 with Adam, full batch, for 30 steps on 20,000 synthetic digits on
a LocalCluster of 3 single-thread workers (--workers 3); a timer kills one worker, chosen at
random, at a random moment between the start of step 3 and the end of step 27. The time a
fault cost is the run's time less the median time of RUNS//4 (at least 2) runs without one,
in steps of that median run.
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

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=int, nargs="?", default=20)
    parser.add_argument("--signal", choices=("KILL", "TERM"), default="KILL")
    args = parser.parse_args()
    signum = getattr(signal, f"SIG{args.signal}")
    data = synthetic_digits(20_000, 2_000)
    config = Config(hidden=(128,), optimizer="adam", lr=3e-3, steps=STEPS)
    _, reference = train(data, numpy_backend(), config, eval_every=STEPS)
    want = reference.last["test_accuracy"]
    rng = random.Random(0)
    with select_engine("cpu", "dask", workers=3) as engine:
        train(data, engine, config.replace(steps=2), eval_every=2)  # one-off costs first
        clean = []
        for _ in range(max(2, args.runs // 4)):
            begin = time.perf_counter()
            train(data, engine, config, eval_every=STEPS)
            clean.append(time.perf_counter() - begin)
        typical = statistics.median(clean)
        per_step = typical / STEPS
        print(f"without a fault: {typical:.2f} s a run ({per_step * 1e3:.0f} ms a step), "
              f"NumPy's test accuracy {want:.4f}")
        worst, failures = 0.0, 0
        for run in range(1, args.runs + 1):
            victim_pid = rng.choice(list(engine.client.run(os.getpid).values()))
            delay = rng.uniform(3 * per_step, (STEPS - 3) * per_step)
            timer = threading.Timer(delay, os.kill, (victim_pid, signum))
            begin = time.perf_counter()
            timer.start()
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    _, history = train(data, engine, config, eval_every=STEPS)
                seconds = time.perf_counter() - begin
                got = history.last["test_accuracy"]
                lost = (seconds - typical) / per_step
                redone = sum("worker was lost" in str(w.message) for w in caught)
                ok = got == want and lost <= 2
                failures += not ok
                worst = max(worst, lost)
                print(f"run {run:2d}: kill at {delay:5.2f} s, {redone} step(s) redone, "
                      f"accuracy {got:.4f} ({'= NumPy' if got == want else 'DIFFERS'}), "
                      f"{seconds:.2f} s: {lost:+.1f} steps of time"
                      f"{'' if ok else '  <- FAILED'}", flush=True)
            except Exception as exc:  # a run the fault ended counts, and the next one goes on
                failures += 1
                print(f"run {run:2d}: kill at {delay:5.2f} s: ENDED ({type(exc).__name__}: "
                      f"{str(exc).splitlines()[0][:120]})", flush=True)
            finally:
                timer.cancel()
            deadline = time.time() + 30  # the nanny's new worker, before the next run
            while len(engine.workers) < 3 and time.time() < deadline:
                time.sleep(0.2)
    print(f"{args.runs - failures} of {args.runs} runs finished with NumPy's accuracy within "
          f"two steps' time of the fault; the worst cost {worst:.1f} steps")
    raise SystemExit(1 if failures else 0)
