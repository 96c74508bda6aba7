"""Per-step cost of TLS on a 2-worker LocalCluster at H=128 (60,000 synthetic rows): the
engine over a TLS cluster (what `--workers 2` starts) against one over plain TCP, both alive,
measured in alternation (bench.measure_case, 10 steps after 2 warm-up, per round):

    python bench/tls_cost.py [ROUNDS]
"""
import logging
import statistics
import sys

import dask
from distributed import Client, LocalCluster

from mnist_xp.bench import measure_case
from mnist_xp.cluster import ClusterEngine, start

if __name__ == "__main__":
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    tls = start(2, None, gpu=False)
    with dask.config.set({"distributed.scheduler.work-stealing": False}):
        plain_cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                     host="127.0.0.1", dashboard_address="127.0.0.1:0",
                                     silence_logs=logging.CRITICAL)
    plain = ClusterEngine(Client(plain_cluster), plain_cluster)
    times = {"tls": [], "tcp": []}
    for r in range(rounds):
        order = (("tls", tls), ("tcp", plain))
        for name, engine in order if r % 2 == 0 else order[::-1]:
            case = measure_case(engine, (128,), rows=60_000, repeats=10, warmup=2)
            times[name].append(case["step_ms"])
            print(f"{name} {case['step_ms']:.1f} ms/step, {case['overhead_ms']:.1f} ms for a "
                  f"step of almost no rows", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"median of {rounds}: tls {med['tls']:.1f} ms, tcp {med['tcp']:.1f} ms, "
          f"tls/tcp {med['tls'] / med['tcp']:.3f}")
    tls.close()
    plain.close()
