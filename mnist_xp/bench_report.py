"""The benchmark's results as a Markdown report and as a picture (matplotlib, extra `plot`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .files import atomic_write, check_output, json_text
from .plotting import pyplot, save_png


def hidden_label(hidden: list[int]) -> str:
    return ",".join(map(str, hidden)) or "none"


def _number(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def library(case: dict[str, Any]) -> str:
    """The case's library, with 'jit' where its step was compiled (cases from before the
    library was recorded ran NumPy on the CPU and CuPy on a GPU)."""
    name = case.get("library") or ("numpy" if case["device"] == "cpu" else "cupy")
    if case.get("workers"):
        return f"{name} cluster, {case['workers']} worker{'s' if case['workers'] > 1 else ''}"
    return f"{name} jit" if case.get("compiled") else name


def add_speedups(cases: list[dict[str, Any]]) -> None:
    """Each case's speedup over NumPy's CPU case of the same hidden sizes and dtype (the first
    CPU case where NumPy did not run), in place."""
    cpu: dict[tuple[Any, ...], float] = {}
    for c in sorted((c for c in cases if c["device"] == "cpu"),
                    key=lambda c: library(c) != "numpy"):
        cpu.setdefault((tuple(c["hidden"]), c["dtype"]), c["step_ms"])
    for case in cases:
        base = cpu.get((tuple(case["hidden"]), case["dtype"]))
        case["speedup_vs_cpu"] = base / case["step_ms"] if base else None


def _by_preset(accuracy: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Time-to-accuracy runs grouped by preset (results before presets were named: best)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for run in accuracy:
        groups.setdefault(run.get("preset", "best"), []).append(run)
    return groups


def markdown(result: dict[str, Any]) -> str:
    """The report: the step table, the peaks it used, and time to accuracy."""
    lines = [
        f"Full-batch step over {result['rows']:,} rows (forward, backward, Adam), median of "
        f"{result['repeats']} after {result['warmup']} warm-up; command: `{result['command']}`"
        + (" (interrupted by Ctrl-C: only the cases below were timed)"
           if result.get("interrupted") else ""),
        "",
        "| device | backend | hidden | dtype | TF32 | tail | step ms | GFLOP/s | % of peak "
        "| step / 2 products | to device ms | peak memory MiB | speedup vs NumPy CPU "
        "| torch ms | ours / torch |",
        "|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in result["cases"]:
        tf32 = "–" if c["tf32"] is None else ("on" if c["tf32"] else "off")
        memory = None if c["peak_memory_bytes"] is None else c["peak_memory_bytes"] / 2**20
        ours_over_torch = c["step_ms"] / c["torch_ms"] if c.get("torch_ms") else None
        lines.append(
            f"| {c['device']} | {library(c)} | {hidden_label(c['hidden'])} | {c['dtype']} "
            f"| {tf32} "
            f"| {c['tail']} | {_number(c['step_ms'], 2)} | {_number(c['gflops'])} "
            f"| {_number(c['percent_of_peak'])} | {_number(c['step_over_products'], 3)} "
            f"| {_number(c['to_device_ms'])} | {_number(memory)} "
            f"| {_number(c.get('speedup_vs_cpu'), 2)} | {_number(c.get('torch_ms'), 2)} "
            f"| {_number(ours_over_torch, 2)} |")
    clustered = [c for c in result["cases"] if c.get("workers")]
    if clustered:
        lines += ["", "On a Dask cluster: bytes on the network per step (parameters out, partial "
                  "sums back, anything between workers), and the step's scheduling overhead (a "
                  "step over one row per chunk, the same number of chunks):", "",
                  "| backend | hidden | step ms | NumPy step ms | step / NumPy's | kB per step "
                  "| × parameters | overhead ms | overhead share |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for c in clustered:
            numpy_ms = c["step_ms"] * c["speedup_vs_cpu"] if c.get("speedup_vs_cpu") else None
            lines.append(
                f"| {library(c)} | {hidden_label(c['hidden'])} | {_number(c['step_ms'], 1)} "
                f"| {_number(numpy_ms, 1)} "
                f"| {_number(c['step_ms'] / numpy_ms if numpy_ms else None, 2)} "
                f"| {_number(c['bytes_per_step'] / 1e3)} "
                f"| {_number(c['bytes_per_step'] / c['parameter_bytes'], 2)} "
                f"| {_number(c['overhead_ms'], 1)} "
                f"| {_number(c['overhead_ms'] / c['step_ms'], 2)} |")
    lines += ["", "Peaks used for % of peak:"]
    for peak in dict.fromkeys(f"{c['device']}: {c['peak']}" for c in result["cases"]):
        lines.append(f"- {peak}")
    for preset, runs in _by_preset(result.get("accuracy") or []).items():
        targets = list(runs[0]["reached"])
        lines += ["", f"Time to accuracy, `{preset}` preset, training seconds (evaluations "
                  "excluded), at the first evaluation that reaches it:", "",
                  f"| device | {' | '.join(targets)} | steps run | final test accuracy |",
                  "|---|" + "---:|" * (len(targets) + 2)]
        for a in runs:
            cells = []
            for target in targets:
                hit = a["reached"].get(target)
                cells.append("not reached" if hit is None else
                             f"{hit['seconds']:.2f} s (step {hit['step']})")
            final = a["final_test_accuracy"]
            lines.append(f"| {a['device']} | {' | '.join(cells)} | {a['steps_run']} "
                         f"| {_number(None if final is None else 100 * final, 2)}% |")
    machine = result["machine"]
    lines += ["", f"Machine: {machine['cpu']['model']}, {machine['cpu']['cores']} cores; "
              + "; ".join(machine.get("gpus", ["no GPU"]))
              + f"; NumPy {machine['numpy']} ({machine['blas']})"
              + (f", CuPy {machine['cupy']}" if "cupy" in machine else "")
              + (f", torch {machine['torch']}" if "torch" in machine else "")
              + "".join(f", {name} {version}" for name, version in
                        machine.get("libraries", {}).items()
                        if name not in ("numpy", "cupy", "torch"))
              + f", Python {machine['python']}."]
    for cluster in machine.get("clusters", []):
        lines.append(f"Cluster: {cluster}.")
    settings = machine.get("blas_settings")
    if settings:
        lines.append("BLAS settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()) + ".")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    """Step time against total hidden units per device (log-log), and the GPU/CPU speedups."""
    plt = pyplot()
    figure, (times, speedups) = plt.subplots(1, 2, figsize=(11, 4.2))
    series: dict[str, list[dict[str, Any]]] = {}
    for c in result["cases"]:
        tf32 = "" if c["tf32"] is None else (", TF32" if c["tf32"] else ", FP32")
        tail = ", fused" if c["tail"] != "array-api" else ""
        series.setdefault(f"{c['device']} {library(c)} {c['dtype']}{tf32}{tail}", []).append(c)
    hand_written: set[tuple[Any, ...]] = set()  # the torch step, once per device and mode
    for label, cases in series.items():
        cases = sorted(cases, key=lambda c: sum(c["hidden"]))
        units = [sum(c["hidden"]) or 1 for c in cases]
        (line,) = times.plot(units, [c["step_ms"] for c in cases], marker="o", label=label)
        key = (cases[0]["device"], cases[0]["dtype"], cases[0]["tf32"])
        if any(c.get("torch_ms") for c in cases) and key not in hand_written:
            hand_written.add(key)
            tf32 = "" if key[2] is None else (", TF32" if key[2] else ", FP32")
            times.plot(units, [c.get("torch_ms") for c in cases], marker="x", linestyle="--",
                       color="gray", label=f"{key[0]} {key[1]}{tf32}: torch by hand")
        if cases[0]["device"] != "cpu" or library(cases[0]) != "numpy":
            speedups.plot(units, [c.get("speedup_vs_cpu") for c in cases], marker="o",
                          label=label, color=line.get_color())
    times.set(xscale="log", yscale="log", xlabel="hidden units",
              ylabel="ms per full-batch step (60,000 rows)", title="Step time")
    times.legend(fontsize=7)
    times.grid(True, which="both", alpha=0.3)
    speedups.set(xscale="log", yscale="log", xlabel="hidden units",
                 ylabel="NumPy CPU step time / this step time", title="Speedup over NumPy")
    if speedups.lines:
        speedups.legend(fontsize=7)
    else:
        speedups.text(0.5, 0.5, "only NumPy on the CPU in this run", ha="center", va="center",
                      transform=speedups.transAxes)
    speedups.grid(True, which="both", alpha=0.3)
    figure.suptitle(result["machine"]["cpu"]["model"] + "; "
                    + "; ".join(result["machine"].get("gpus", ["no GPU"])), fontsize=9)
    figure.tight_layout()
    save_png(figure, path, dpi=110)


def check_outputs(json_path: Path | None, markdown_path: Path | None,
                  plot_path: Path | None) -> None:
    """bench's output files, checked before anything is timed (and the plot extra with
    --plot: missing, it is a usage error before the timings, not after)."""
    for option, path, example in (("--json", json_path, "bench.json"),
                                  ("--markdown", markdown_path, "bench.md"),
                                  ("--plot", plot_path, "bench.png")):
        check_output(path, option, example)
    if plot_path:
        pyplot()


def write(result: dict[str, Any], json_path: Path | None, markdown_path: Path | None,
          plot_path: Path | None) -> str:
    """Write the result as JSON, its report as Markdown and its plot, where asked (each
    atomically); returns the report."""
    report = markdown(result)
    if json_path:
        text = json_text(result)
        atomic_write(json_path, lambda handle: handle.write(text.encode()))
    if markdown_path:
        atomic_write(markdown_path, lambda handle: handle.write(report.encode()))
    if plot_path and result["cases"]:
        plot(result, plot_path)
    return report
