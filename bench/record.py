"""Run the step benchmark several times per case and record it with the machine it ran on.

    python bench/record.py --device cpu --hidden 128 --runs 5 --out bench/results/NAME.json

Each run is one `mnist-xp bench` measurement (step and product medians from the same run);
the record keeps every run and the median of the per-run ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from pathlib import Path

import array_api_compat
import numpy as np

from mnist_xp.backend import select_backend
from mnist_xp.bench import time_step


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def blas() -> str:
    try:
        config = np.show_config(mode="dicts")
        info = config["Build Dependencies"]["blas"]
        return f"{info.get('name')} {info.get('version', '')}".strip()
    except Exception:
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--hidden", type=int, nargs="+", default=[128])
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    backend = select_backend(args.device)
    cases = []
    for hidden in args.hidden:
        runs = [time_step(backend, (hidden,), args.dtype, repeats=args.repeats)
                for _ in range(args.runs)]
        ratios = [run["ratio"] for run in runs]
        cases.append({"hidden": hidden, "dtype": args.dtype, "runs": runs,
                      "median_ratio": statistics.median(ratios),
                      "median_step_ms": statistics.median(r["step_ms"] for r in runs)})
        print(f"H={hidden}: step {cases[-1]['median_step_ms']:.1f} ms, ratio per run "
              f"{', '.join(f'{r:.3f}' for r in ratios)}, median {cases[-1]['median_ratio']:.3f}")
    record = {
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(),
                    "python": platform.python_version(), "numpy": np.__version__, "blas": blas(),
                    "array_api_compat": array_api_compat.__version__, "backend": backend.name},
        "command": "python bench/record.py " + " ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in vars(args).items()),
        "cases": cases,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
