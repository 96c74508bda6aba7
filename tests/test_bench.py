"""The benchmark's arithmetic and report, time-to-accuracy bookkeeping and the out-of-memory
error. No timings are asserted: speed lives in `mnist-xp bench`, not in tests."""

from __future__ import annotations

import json

import pytest

from mnist_xp import Config, bench, bench_report, train
from mnist_xp.backends import numpy_backend
from mnist_xp.cli import main
from mnist_xp.errors import DeviceMemoryError
from mnist_xp.step import LocalEngine, TrainStep
from mnist_xp.synthetic import synthetic_digits


@pytest.mark.parametrize(("hidden", "rows", "chunk_size"),
                         [((16,), 300, None), ((128,), 200, 64), ((64, 32), 150, None)])
def test_flops_per_step_counts_the_products_a_real_step_runs(hidden, rows, chunk_size,
                                                             monkeypatch):
    """Run the real TrainStep on array_api_strict (NumPy underneath) with its `@` recording
    2·m·k·n for every 2-D product, and compare with flops_per_step. The products with a ones
    vector that row_sums and column_sums use for sums (m or n is 1) are counted apart: they
    are not in flops_per_step, and are checked to be under 1% of it."""
    xps = pytest.importorskip("array_api_strict")
    from mnist_xp import MLP
    from mnist_xp.backends import Backend

    backend = Backend(xps)
    array_type = type(xps.asarray(0.0))
    real = array_type.__matmul__
    counted = {"network": 0, "sums": 0}

    def recording(a, b):
        if a.ndim == 2 and b.ndim == 2:
            (m, k), n = a.shape, b.shape[1]
            counted["sums" if m == 1 or n == 1 else "network"] += 2 * m * k * n
        return real(a, b)

    config = Config(hidden=hidden, activation="relu", loss="ce", optimizer="adam")
    split = LocalEngine(backend).place(synthetic_digits(rows, 0), "train", "float32", chunk_size)
    model = MLP.initialise(config, backend, 0)
    step = TrainStep(backend, config, chunk_size)
    state = step.initial_state(model.params)
    with monkeypatch.context() as patch:
        patch.setattr(array_type, "__matmul__", recording)
        step(model.params, state, split)
    expected = bench.flops_per_step(config.sizes, rows)
    assert counted["network"] == expected
    assert 0 < counted["sums"] < expected / 100


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
    assert case["tail"] == "numpy" and case["tf32"] is None
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


@pytest.mark.parametrize("hidden", [(16,), (16, 8)])
def test_torch_step_runs_the_same_step(hidden, monkeypatch):
    """torch_step_ms returns only a time, so the parameters it trains are caught as
    torch.as_tensor makes them (the images, the labels, then each parameter, which the step
    updates in place). After its warmup + 1 + repeats steps they must equal, to float64
    rounding, those of as many steps of the package's own TrainStep on NumPy from the same
    seed and data: the same init, forward, softmax cross-entropy gradient, backprop and Adam."""
    torch = pytest.importorskip("torch")
    import math

    import numpy as np

    from mnist_xp import MLP

    made = []
    as_tensor = torch.as_tensor

    def recording(*args, **kwargs):
        made.append(as_tensor(*args, **kwargs))
        return made[-1]

    rows, warmup, repeats, seed = 300, 1, 2, 3
    with monkeypatch.context() as patch:
        patch.setattr(torch, "as_tensor", recording)
        ms = bench.torch_step_ms("cpu", hidden, "float64", rows=rows, repeats=repeats,
                                 warmup=warmup, seed=seed)
    assert math.isfinite(ms) and ms > 0
    got = [t.numpy() for t in made[2:]]

    backend, config = numpy_backend(), Config(hidden=hidden, dtype="float64")
    split = LocalEngine(backend).place(synthetic_digits(rows, 0, seed), "train", "float64")
    params = MLP.initialise(config, backend, seed).params
    step = TrainStep(backend, config)
    state = step.initial_state(params)
    for _ in range(warmup + 1 + repeats):
        params, state, _ = step(params, state, split)
    assert [g.shape for g in got] == [p.shape for p in params]
    for torch_param, ours in zip(got, params):
        np.testing.assert_allclose(torch_param, ours, rtol=1e-10, atol=1e-12)


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


def _measured_peak(config, train_rows, test_rows, chunk_rows):
    """The traced peak of what a run holds on NumPy (host memory is its device memory): both
    splits moved to the device, the model, and two training steps with the loss and an
    accuracy count over the test split."""
    from mnist_xp import MLP

    from conftest import traced_peak

    backend = numpy_backend()
    engine = LocalEngine(backend)
    train_data = synthetic_digits(train_rows, 0, 0)
    test_data = synthetic_digits(test_rows, 0, 1)
    with traced_peak() as peak:
        train_split = engine.place(train_data, "train", config.dtype, chunk_rows)
        test_split = engine.place(test_data, "train", config.dtype, chunk_rows)
        params = MLP.initialise(config, backend, 0).params
        step = engine.train_step(config, chunk_rows)
        state = step.initial_state(params)
        for _ in range(2):
            params, state, _ = step(params, state, train_split, with_loss=True)
        engine.accuracy(config.activation, chunk_rows)(params, test_split)
    return peak[0]


@pytest.mark.parametrize(("hidden", "dtype", "optimizer", "train_rows", "test_rows", "chunk"), [
    pytest.param((16,), "float32", "adam", 4000, 4000, 2048, id="data-dominated"),
    pytest.param((800,), "float64", "adam", 6000, 1000, 2048, id="float64-800"),
    pytest.param((256, 128), "float32", "momentum", 6000, 1000, 6000, id="deep-one-chunk"),
    pytest.param((2048,), "float32", "adam", 4096, 100, 4096, id="chunk-dominated"),
    pytest.param((4096,), "float32", "adam", 100, 100, 100, id="parameter-dominated"),
    pytest.param((4096,), "float32", "momentum", 100, 100, 100, id="parameters-momentum"),
    pytest.param((4096,), "float32", "sgd", 100, 100, 100, id="parameters-sgd"),
])
def test_memory_estimate_is_near_the_measured_peak(hidden, dtype, optimizer, train_rows,
                                                   test_rows, chunk):
    """estimated_bytes (what the out-of-memory message says a run needs) lies within 0.8x to
    2x of the peak traced for the data, the model and real steps on NumPy. Measured ratios:
    1.01, 1.13, 1.13, 1.43, 0.95, 1.09 and 1.13 for the cases above (the parameter-dominated
    Adam case was 0.62 before the estimate counted the state the update makes beside the
    old)."""
    from mnist_xp.train import estimated_bytes

    config = Config(hidden=hidden, dtype=dtype, optimizer=optimizer)
    measured = _measured_peak(config, train_rows, test_rows, chunk)
    ratio = estimated_bytes(config, train_rows, test_rows, chunk) / measured
    assert 0.8 <= ratio <= 2, f"estimate / measured = {ratio:.2f}"


def test_memory_estimate_grows_with_the_chunk_as_the_peak_does():
    """What one more row per chunk costs: the estimate's slope is within 0.8x to 2x of the
    measured one (measured 1.72x: the estimate counts 4H + 30 values a row, a step holds
    about 2.3H at its peak)."""
    from mnist_xp.train import estimated_bytes

    config = Config(hidden=(2048,))
    small, large = 1024, 4096
    measured = (_measured_peak(config, large, 100, large)
                - _measured_peak(config, large, 100, small))
    estimated = (estimated_bytes(config, large, 100, large)
                 - estimated_bytes(config, large, 100, small))
    assert measured > 0
    assert 0.8 <= estimated / measured <= 2, f"estimate / measured = {estimated / measured:.2f}"


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


def test_bench_times_a_mini_batch_preset_once_per_epoch_to_its_targets(tiny_dir, tiny_data,
                                                                        capsys, monkeypatch):
    """--accuracy-preset record: a mini-batch preset is evaluated once per epoch, waits for
    98%, 99% and 99.4%, and has a table of its own beside best's (record shrunk to 3 epochs of
    a small net, so that the test trains in seconds)."""
    from mnist_xp import presets

    small = presets.PRESETS["record"].replace(hidden=(16,), epochs=3)
    monkeypatch.setitem(presets.PRESETS, "record", small)
    out_json = tiny_dir / "bench.json"
    assert main(["bench", "--device", "cpu", "--rows", "300", "--hidden", "16", "--repeats", "1",
                 "--warmup", "0", "--no-torch", "--data-dir", str(tiny_dir), "--json",
                 str(out_json), "--accuracy-preset", "best", "record"]) == 0
    out = capsys.readouterr().out
    assert "Time to accuracy, `best` preset" in out and "| device | 97% | 98% |" in out
    assert "Time to accuracy, `record` preset" in out
    assert "| device | 98% | 99% | 99.4% | steps run |" in out
    best, record = json.loads(out_json.read_text())["accuracy"]
    assert (best["preset"], best["eval_every"]) == ("best", 5)
    rows = len(tiny_data.train_labels)
    assert (record["preset"], record["eval_every"]) == ("record", -(-rows // 128))
    assert record["steps_run"] <= 3 * record["eval_every"]


@pytest.mark.parametrize(("flags", "message"), [
    (["--accuracy-every", "0"], "--accuracy-every must be at least 1"),
    (["--accuracy-preset", "fastest"], "--accuracy-preset: invalid choice: 'fastest'")])
def test_bench_refuses_a_bad_accuracy_flag_before_timing(flags, message, capsys):
    try:
        status = main(["bench", "--device", "cpu", "--hidden", "8", *flags])
    except SystemExit as refused:  # argparse's own refusal
        status = refused.code
    assert status == 2
    captured = capsys.readouterr()
    assert message in captured.err.strip().splitlines()[-1] and "device:" not in captured.out


def test_ctrl_c_in_bench_keeps_what_was_timed(tmp_path, capsys, monkeypatch):
    """Ctrl-C during the second case: the first is in the report and the JSON, which says it
    was interrupted, the command says so in one line and exits 130; no line says tf32=None
    (a CPU case has no TF32 mode)."""
    out_json = tmp_path / "bench.json"
    real = bench.measure_case
    calls = []

    def second_is_interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(bench, "measure_case", second_is_interrupted)
    assert main(["bench", "--device", "cpu", "--rows", "300", "--hidden", "16", "8,8",
                 "--repeats", "2", "--warmup", "1", "--no-accuracy", "--no-torch",
                 "--json", str(out_json)]) == 130
    out, err = capsys.readouterr()
    result = json.loads(out_json.read_text())
    assert result["interrupted"] is True and [c["hidden"] for c in result["cases"]] == [[16]]
    assert "| cpu | numpy | 16 | float32 |" in out and "interrupted by Ctrl-C" in out
    assert err.strip() == (f"interrupted by Ctrl-C: the report above holds the 1 cases timed "
                           f"before it, written to {out_json}")
    assert "tf32=" not in out


def test_bench_readme_lists_every_script_and_each_names_its_command():
    """Every figure needs the command that produced it: each script in bench/ is in
    bench/README.md's table, and its docstring (or header) shows how to run it."""
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "bench"
    readme = (folder / "README.md").read_text()
    for script in [*folder.glob("*.py"), *folder.glob("*.sh")]:
        assert f"`{script.name}`" in readme, script.name
        head = script.read_text()[:3000]
        runs = ("bench/gpu_check.sh" if script.name == "gpu_checks.py" else  # runs it
                f"{'bash' if script.suffix == '.sh' else 'python'} bench/{script.name}")
        assert runs in head, script.name
