"""Mini-batch training against its peers, measured back to back on one machine:

    python bench/minibatch_peers.py [--data-dir DIR] [--rounds 3] [--json FILE]

The peer configuration: 784→256→10 ReLU, softmax cross-entropy, Adam (lr 1e-3, β 0.9/0.999,
ε 1e-8... Keras's ε is 1e-7), mini-batches of 200 shuffled afresh each epoch, 10 epochs over
MNIST's 60,000 training digits. Contenders: mnist_xp on each installed backend (NumPy, torch,
JAX; the very `mnist_xp.train` a user runs, with one evaluation at the end) and, where
installed (`pip install keras`), Keras 3 on JAX and on torch (`model.fit`). Each contender
runs in a fresh process of its own, so every one pays its own imports' and compiles' one-off
costs inside the time, as a user does; the contenders take turns, round after round, so that
they see the same machine load, and the median of the rounds is reported.

seconds: the wall time of the 10 epochs (mnist_xp: training seconds until the final
evaluation; Keras: the `fit` call); accuracy: the test accuracy at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from mnist_xp.bench import cpu_description

HIDDEN, LR, BATCH, EPOCHS = 256, 1e-3, 200, 10

MNIST_XP = """
import json, sys, time
from mnist_xp.backends import select_backend
from mnist_xp.datasets import load_dataset
from mnist_xp.train import train
data = load_dataset("mnist", sys.argv[1] or None)
backend = select_backend("cpu", sys.argv[2])
steps = {epochs} * (60_000 // {batch})
model, history = train(data, backend, None, hidden=({hidden},), optimizer="adam", lr={lr},
                       weight_decay=0.0, batch_size={batch}, epochs={epochs},
                       eval_every=steps, log_every=steps)
last = history.records[-1]
print(json.dumps({{"seconds": last["train_seconds"], "accuracy": last["test_accuracy"]}}))
"""

KERAS = """
import json, os, sys, time
os.environ["KERAS_BACKEND"] = sys.argv[2]
import numpy as np
import keras
from mnist_xp.datasets import load_dataset
data = load_dataset("mnist", sys.argv[1] or None)
(x, y), (xt, yt) = data.split("train"), data.split("test")
x = x.reshape(len(x), -1).astype("float32") / 255
xt = xt.reshape(len(xt), -1).astype("float32") / 255
keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((784,)), keras.layers.Dense({hidden}, activation="relu"),
                          keras.layers.Dense(10)])
model.compile(optimizer=keras.optimizers.Adam({lr}),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
              metrics=["accuracy"])
begin = time.perf_counter()
model.fit(x, y, batch_size={batch}, epochs={epochs}, shuffle=True, verbose=0)
seconds = time.perf_counter() - begin
accuracy = float(np.mean(np.argmax(model.predict(xt, batch_size=10_000, verbose=0), 1) == yt))
print(json.dumps({{"seconds": seconds, "accuracy": accuracy}}))
"""


def installed(module: str, keras_backend: str = "jax") -> bool:
    return subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True,
                          env={**os.environ, "KERAS_BACKEND": keras_backend}).returncode == 0


def contenders() -> dict[str, tuple[str, str]]:
    """name -> (script, backend argument), for what is installed here."""
    found = {"mnist_xp numpy": (MNIST_XP, "numpy")}
    for library in ("torch", "jax"):
        if installed(library):
            found[f"mnist_xp {library}"] = (MNIST_XP, library)
    if installed("keras"):
        for library in ("jax", "torch"):
            if installed("keras", library):
                found[f"keras {library}"] = (KERAS, library)
    return found


def run(script: str, data_dir: str, backend: str) -> dict[str, float]:
    code = script.format(hidden=HIDDEN, lr=LR, batch=BATCH, epochs=EPOCHS)
    done = subprocess.run([sys.executable, "-c", code, data_dir, backend], capture_output=True,
                          text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if done.returncode != 0:
        raise SystemExit(f"{backend}: {done.stderr.strip().splitlines()[-1]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="", help="MNIST's four files (default: "
                        "$MNIST_XP_DATA_DIR or the cache, downloading them once)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", nargs="+", help="contenders to run (default: all installed)")
    parser.add_argument("--json", help="write the rounds and medians here")
    args = parser.parse_args()
    chosen = contenders()
    if args.only:
        chosen = {name: chosen[name] for name in args.only}
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in chosen}
    began = time.strftime("%Y-%m-%d %H:%M")
    for r in range(args.rounds):
        for name, (script, backend) in chosen.items():
            rounds[name].append(result := run(script, args.data_dir, backend))
            print(f"round {r + 1}: {name}: {result['seconds']:.2f} s, "
                  f"{100 * result['accuracy']:.2f}%", file=sys.stderr, flush=True)
    medians = {name: {"seconds": statistics.median(x["seconds"] for x in results),
                      "accuracy": statistics.median(x["accuracy"] for x in results)}
               for name, results in rounds.items()}
    cpu = cpu_description()
    print(f"784-{HIDDEN}-10, Adam lr {LR:g}, batch {BATCH}, {EPOCHS} epochs; median of "
          f"{args.rounds} interleaved rounds; {cpu['model']}, {cpu['cores']} cores")
    print("| contender | seconds | test accuracy |\n|---|---:|---:|")
    for name, m in sorted(medians.items(), key=lambda item: item[1]["seconds"]):
        print(f"| {name} | {m['seconds']:.2f} | {100 * m['accuracy']:.2f}% |")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"began": began, "command": " ".join(sys.argv), "cpu": cpu, "rounds": rounds,
                       "medians": medians}, out, indent=1)


if __name__ == "__main__":
    main()
