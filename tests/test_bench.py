"""The benchmark's arithmetic and report, time-to-accuracy bookkeeping and the out-of-memory
error. No timings are asserted: speed lives in `mnist-xp bench`, not in tests."""

from __future__ import annotations

import json

import pytest

from mnist_xp import Config, bench, bench_report, train
from mnist_xp.backends import numpy_backend
from mnist_xp.cli import main
from mnist_xp.errors import DeviceMemoryError


def test_flops_per_step_follows_the_issue_formula():
    for hidden in (10, 128, 800):
        assert bench.flops_per_step((784, hidden, 10), 60_000) == 60_000 * hidden * (
            4 * 784 + 6 * 10)
    # deeper: the first layer has no dA product, the others do
    assert bench.flops_per_step((784, 64, 32, 10), 5) == 2 * 5 * (
        784 * 64 * 2 + 64 * 32 * 3 + 32 * 10 * 3)


def test_gpu_peaks_are_named_and_unknown_gpus_say_so():
    peak, name = bench.gpu_peak("NVIDIA H100 80GB HBM3", "float32", tf32=False)
    assert peak == 67e12 and "H100 FP32" in name
    assert bench.gpu_peak("NVIDIA H100 PCIe", "float32", tf32=True)[0] == 378e12
    assert bench.gpu_peak("NVIDIA H200", "float64", tf32=True)[0] == 67e12  # TF32 is float32's
    assert bench.gpu_peak("Mystery GPU", "float32", tf32=False) == (
        None, "unknown for 'Mystery GPU'")


def test_a_measured_case_reports_everything(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    case = bench.measure_case(numpy_backend(), (16,), rows=500, repeats=2, warmup=1)
    assert case["step_ms"] > 0 and case["products_ms"] > 0 and case["to_device_ms"] > 0
    assert case["gflop_per_step"] == pytest.approx(500 * 16 * (4 * 784 + 6 * 10) / 1e9)
    assert case["gflops"] == pytest.approx(case["gflop_per_step"] / case["step_ms"] * 1e3)
    # the traced host memory holds at least the float32 images
    assert case["peak_memory_bytes"] >= 500 * 784 * 4
    assert case["tail"] == "array-api" and case["tf32"] is None
    assert case["library"] == "numpy" and not case["compiled"]
    cases = [case, dict(case, device="cuda:0", library="cupy", step_ms=case["step_ms"] / 4,
                        tf32=True)]
    bench_report.add_speedups(cases)
    assert cases[1]["speedup_vs_cpu"] == pytest.approx(4.0)
    result = {"rows": 500, "repeats": 2, "warmup": 1, "command": "mnist-xp bench", "cases": cases,
              "machine": bench.machine_description([numpy_backend()]),
              "accuracy": [{"device": "cpu", "reached": {"97%": {"seconds": 1.5, "step": 10},
                                                         "98%": None},
                            "steps_run": 150, "final_test_accuracy": 0.975}]}
    report = bench_report.markdown(result)
    assert "| cuda:0 | cupy | 16 | float32 | on |" in report and "| 4.00 |" in report
    assert "1.50 s (step 10) | not reached | 150 | 97.50% |" in report
    assert result["machine"]["blas_settings"]["OPENBLAS_CORETYPE"] == "Haswell"
    assert "BLAS settings: " in report and "OPENBLAS_CORETYPE=Haswell" in report
    pytest.importorskip("matplotlib")
    bench_report.plot(result, tmp_path / "bench.png")
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_torch_step_runs_the_same_shapes():
    pytest.importorskip("torch")
    assert bench.torch_step_ms("cpu", (16,), rows=300, repeats=2, warmup=1) > 0


def test_training_stops_at_an_accuracy_and_times_without_evaluations(tiny_data):
    _, history = train(tiny_data, numpy_backend(), "relu10", steps=200, lr=0.05, eval_every=5,
                       stop_at_accuracy=0.5)
    assert history.steps < 200 and history.steps == history.records[-1]["step"]
    assert history.last["test_accuracy"] >= 0.5
    for record in history.records:
        assert 0 < record["train_seconds"] < record["seconds"]


def test_out_of_memory_names_the_need_and_the_flag(tiny_data, monkeypatch):
    def exhausted(*args, **kwargs):
        raise MemoryError
    monkeypatch.setattr("mnist_xp.nn.loss_and_gradients", exhausted)
    with pytest.raises(DeviceMemoryError, match=r"about \d+\.\d\d GiB .*--chunk-size 512"):
        train(tiny_data, numpy_backend(), "relu10", steps=3)


def test_memory_estimate_grows_with_the_chunk():
    config = Config(hidden=(800,), dtype="float64")
    small = train_module_estimate(config, 1024)
    assert train_module_estimate(config, 60_000) - small == pytest.approx(
        (60_000 - 1024) * (2 * 800 + 3 * 10 + 2 * 800) * 8)


def train_module_estimate(config, rows):
    from mnist_xp.train import estimated_bytes

    return estimated_bytes(config, 60_000, 10_000, rows)


def test_bench_command_writes_json_and_markdown(tmp_path, capsys):
    out_json, out_md = tmp_path / "bench.json", tmp_path / "bench.md"
    assert main(["bench", "--device", "cpu", "--rows", "300", "--hidden", "16", "8,8",
                 "--repeats", "2", "--warmup", "1", "--no-accuracy", "--no-torch",
                 "--json", str(out_json), "--markdown", str(out_md)]) == 0
    out = capsys.readouterr().out
    assert "| cpu | numpy | 8,8 | float32 |" in out and "GFLOP/s nominal" in out
    result = json.loads(out_json.read_text())
    assert [c["hidden"] for c in result["cases"]] == [[16], [8, 8]]
    assert result["command"].startswith("mnist-xp bench --device cpu")
    assert out_md.read_text() in out


def test_bench_times_the_best_preset_to_accuracy(tiny_dir, capsys):
    assert main(["bench", "--device", "cpu", "--rows", "300", "--hidden", "16", "--repeats", "1",
                 "--warmup", "0", "--no-torch", "--data-dir", str(tiny_dir),
                 "--accuracy-every", "2"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| cpu | ") and "%" in line)
    assert row.count("(step ") == 2  # the synthetic digits reach 97% and 98%
