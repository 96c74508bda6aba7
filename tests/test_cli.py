"""The mnist-xp command: exit codes, one-line errors, outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mnist_xp import MLP
from mnist_xp.backends import numpy_backend
from mnist_xp.cli import main

from conftest import importorskip
from helpers import idx_images_bytes, kaggle_csv, write

FAST = ["--preset", "relu10", "--steps", "12", "--lr", "0.05", "--quiet"]


def run_module(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """python -m mnist_xp ARGS in a fresh interpreter, as a user would run it."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("MNIST_XP_DATA_DIR", None)
    return subprocess.run([sys.executable, "-m", "mnist_xp", *args], capture_output=True,
                          text=True, env=full_env, timeout=120)


def test_cuda_without_cupy_exits_2_with_the_install_hint(tmp_path):
    blocker = tmp_path / "nocupy"
    blocker.mkdir()
    (blocker / "cupy.py").write_text("raise ImportError('No module named cupy')\n")
    result = run_module("train", "--device", "cuda", env={"PYTHONPATH": str(blocker)})
    assert result.returncode == 2
    assert result.stderr.strip() == ('error: --device cuda needs CuPy: pip install '
                                     '"mnist-xp[cuda12]" (or "mnist-xp[cuda13]" for CUDA 13)')
    assert "Traceback" not in result.stderr


def test_cuda_with_cupy_but_no_gpu_exits_2_with_the_reason(tmp_path):
    fake = tmp_path / "fakecupy"
    fake.mkdir()
    (fake / "cupy.py").write_text(
        "import types\n"
        "def _count():\n    raise RuntimeError('CUDA driver not found')\n"
        "def is_available():\n    return False\n"
        "cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=_count))\n")
    result = run_module("train", "--device", "cuda:0", env={"PYTHONPATH": str(fake)})
    assert result.returncode == 2
    assert result.stderr.strip() == "error: CuPy found no usable CUDA GPU: CUDA driver not found"


def test_auto_trains_on_the_cpu_and_says_so(tiny_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)
    metrics = tmp_path / "metrics.json"
    model = tmp_path / "model.npz"
    code = main(["train", *FAST, "--device", "auto", "--data-dir", str(tiny_dir),
                 "--metrics-out", str(metrics), "--save", str(model)])
    out = capsys.readouterr().out
    assert code == 0
    assert "device: numpy" in out and "on cpu (auto chose the CPU: CuPy is not installed)" in out
    assert "done: 12 steps" in out and "test accuracy" in out
    report = json.loads(metrics.read_text())
    for key in ("preset", "backend", "device", "dtype", "steps", "batch_size", "seconds",
                "train_accuracy", "test_accuracy", "final_loss", "history"):
        assert key in report
    assert report["backend"] == "numpy" and report["device"] == "cpu"
    assert report["steps"] == 12 and report["batch_size"] == "full"
    assert report["history"][-1]["step"] == 12

    assert main(["evaluate", "--model", str(model), "--device", "cpu",
                 "--data-dir", str(tiny_dir)]) == 0
    out = capsys.readouterr().out
    assert "accuracy on mnist test set (120 images)" in out
    assert out.count("\n") >= 12 and "true\\pred" in out


def test_overrides_and_batch_size_full(tiny_dir, capsys):
    code = main(["train", "--preset", "sigmoid128", "--batch-size", "full", "--steps", "3",
                 "--hidden", "8,4", "--device", "cpu", "--quiet", "--data-dir", str(tiny_dir)])
    out = capsys.readouterr().out
    assert code == 0
    assert "784→8→4→10 sigmoid, softmax+mse, sgd lr=1, full batch, 3 steps" in out


def test_evaluate_kaggle_csv(tiny_dir, tiny_data, tmp_path, capsys):
    model = tmp_path / "m.npz"
    assert main(["train", *FAST, "--device", "cpu", "--data-dir", str(tiny_dir),
                 "--save", str(model)]) == 0
    labelled = kaggle_csv(tmp_path / "train.csv", tiny_data.test_images[:20],
                          tiny_data.test_labels[:20])
    assert main(["evaluate", "--model", str(model), "--device", "cpu",
                 "--csv", str(labelled)]) == 0
    assert "(20 images)" in capsys.readouterr().out
    unlabelled = kaggle_csv(tmp_path / "test.csv", tiny_data.test_images[:20], None)
    assert main(["evaluate", "--model", str(model), "--device", "cpu",
                 "--csv", str(unlabelled)]) == 2
    assert "no label column, so there is nothing to score" in capsys.readouterr().err


@pytest.mark.parametrize("flags,message", [
    (["--lr", "-1"], "learning rate must be a positive number"),
    (["--hidden", "0"], "hidden layer sizes must be at least 1"),
    (["--steps", "0"], "steps must be at least 1"),
    (["--batch-size", "1000"], "batch size 1000 is larger than the 240 training images"),
    (["--save", "/nonexistent-dir/m.npz"], "folder /nonexistent-dir does not exist"),
    (["--checkpoint", "/nonexistent-dir/c.npz"], "--checkpoint /nonexistent-dir/c.npz: folder"),
    (["--checkpoint-every", "5"], "--checkpoint-every needs --checkpoint FILE.npz"),
    (["--eval-every", "0"], "must be at least 1"),
    (["--device", "tpu"], "unknown device 'tpu'"),
])
def test_bad_flags_exit_2_before_training(tiny_dir, capsys, flags, message):
    code = main(["train", *FAST, "--device", "cpu", "--data-dir", str(tiny_dir), *flags])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


@pytest.mark.parametrize("flags", [["--preset", "nope"], ["--hidden", "a,b"],
                                   ["--batch-size", "half"], ["--dtype", "float16"]])
def test_argparse_rejects(flags):
    result = run_module("train", *flags)
    assert result.returncode == 2 and "usage:" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_data_file_is_one_line_exit_1(tiny_dir):
    write(tiny_dir / "train-images-idx3-ubyte.gz", idx_images_bytes(np.zeros((2, 784)), 2049))
    result = run_module("train", *FAST, "--device", "cpu", "--data-dir", str(tiny_dir))
    assert result.returncode == 1
    assert "wrong magic number 2049 (expected 2051); this is a label file" in result.stderr
    assert "Traceback" not in result.stderr


def test_divergence_exits_1(tiny_dir, capsys):
    code = main(["train", "--preset", "relu10", "--lr", "1e30", "--steps", "20", "--quiet",
                 "--device", "cpu", "--data-dir", str(tiny_dir)])
    assert code == 1
    assert "lower the learning rate (--lr, now 1e+30)" in capsys.readouterr().err


def test_a_run_that_blows_up_without_reaching_infinity_fails(tiny_dir, tmp_path, capsys):
    """relu10 at lr 1e6 on the tiny set: the loss grows past 1000x the one it started from
    while every number stays finite; the run ends in one line, exit 1, and --save writes
    nothing."""
    model = tmp_path / "m.npz"
    code = main(["train", "--preset", "relu10", "--lr", "1e6", "--steps", "40", "--quiet",
                 "--device", "cpu", "--data-dir", str(tiny_dir), "--save", str(model)])
    err = capsys.readouterr().err
    assert code == 1 and not model.exists()
    assert "times the" in err and "it started from: the run diverged" in err
    assert "nothing was saved" in err


def test_messages_say_what_is_true(tmp_path, tiny_dir, capsys):
    """A file given as --data-dir is a file, not a missing folder; --activation on a network
    with no hidden layer is refused, not ignored; a text file given as a model is not a model
    file, with no advice to load it unsafely."""
    (tmp_path / "notes.txt").write_text("hello")
    assert main(["train", *FAST, "--device", "cpu", "--data-dir",
                 str(tmp_path / "notes.txt")]) == 2
    assert "notes.txt: is a file; give the folder that holds the four IDX files" in \
        capsys.readouterr().err
    assert main(["train", *FAST, "--hidden", "none", "--activation", "sigmoid", "--device",
                 "cpu", "--data-dir", str(tiny_dir)]) == 2
    assert "--activation sigmoid is for hidden layers" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(tmp_path / "notes.txt"), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "not an mnist-xp model file" in err and "pickle" not in err
    checkpoint = tmp_path / "run.npz"
    assert main(["train", "--preset", "sigmoid128", "--epochs", "10", "--batch-size", "60",
                 "--steps", "3", "--device", "cpu", "--quiet", "--data-dir", str(tiny_dir),
                 "--checkpoint", str(checkpoint)]) == 2  # --steps with --epochs: refused
    capsys.readouterr()
    assert main(["train", "--preset", "sigmoid128", "--batch-size", "60", "--device", "cpu",
                 "--quiet", "--data-dir", str(tiny_dir), "--checkpoint", str(checkpoint),
                 "--steps", "7"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--model", str(checkpoint), "--device", "cpu", "--data-dir",
                 str(tiny_dir)]) == 0
    assert "(a checkpoint after step 7 of that run)" in capsys.readouterr().out


def test_missing_data_dir(tmp_path, capsys):
    assert main(["train", *FAST, "--device", "cpu", "--data-dir", str(tmp_path / "no")]) == 2
    assert "no such directory" in capsys.readouterr().err


def _installed_version(distribution: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def test_info(capsys):
    """Every line states a fact checked here another way: the versions importlib.metadata
    reports, and for CuPy the devices it sees or why there are none."""
    import platform

    import mnist_xp
    from mnist_xp.backends import select_backend
    from mnist_xp.errors import MnistXpError

    from conftest import cupy_available

    assert main(["info"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (f"mnist-xp {mnist_xp.__version__}, Python {platform.python_version()} "
                        f"on {platform.machine()}")
    cupy_line = next(i for i, line in enumerate(lines) if line.startswith("cupy: "))
    versions = dict(line.split(": ", 1) for line in lines[1:cupy_line])
    assert {"numpy", "array-api-compat", "tqdm", "array-api-strict", "torch", "jax", "jaxlib",
            "dask"} <= set(versions)
    for name, printed in versions.items():
        assert printed == (_installed_version(name) or "not installed"), name
    assert versions["numpy"] == np.__version__  # the NumPy this process runs, too
    cupy_dists = [(d, _installed_version(d)) for d in ("cupy-cuda13x", "cupy-cuda12x", "cupy")
                  if _installed_version(d)]
    assert lines[cupy_line] == "cupy: " + (", ".join(f"{d} {v}" for d, v in cupy_dists)
                                           or "not installed")
    devices = lines[cupy_line + 1:]
    if not cupy_dists:
        assert devices == []
    elif cupy_available():
        import cupy

        count = cupy.cuda.runtime.getDeviceCount()
        assert len(devices) == count
        for index, line in enumerate(devices):
            gpu = cupy.cuda.runtime.getDeviceProperties(index)["name"].decode()
            assert line.startswith(f"  cuda:{index}: cupy {cupy.__version__} on cuda:{index} "
                                   f"({gpu}")
    else:  # installed, no usable GPU: one line, with the reason selecting the device gives
        with pytest.raises(MnistXpError) as why:
            select_backend("cuda:0", "cupy")
        assert str(why.value).strip()
        assert devices == [f"  no CUDA device: {why.value}"]


def _matmul_off_by(monkeypatch, relative: float | None) -> None:
    """Make array_api_strict's `@` wrong on every product bigger than a vector (so that the
    backend's 1x1 start-up proof still passes): each result column off by ±relative in turn,
    or, with None, the product missing the last term of its sum."""
    import array_api_strict as xp

    array_type = type(xp.asarray(0.0))
    real = array_type.__matmul__

    def wrong(a, b):
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] == 1 or b.shape[1] == 1:
            return real(a, b)
        if relative is None:
            return real(a[:, :-1], b[:-1, :])
        out = real(a, b)
        signs = np.where(np.arange(out.shape[1]) % 2 == 0, 1.0, -1.0)
        return out * (1.0 + relative * xp.asarray(signs.astype(np.float32), dtype=out.dtype))

    monkeypatch.setattr(array_type, "__matmul__", wrong)


@pytest.mark.parametrize(("relative", "agrees"), [(0.0, True), (1e-6, True), (1e-3, False),
                                                (None, False)],
                         ids=["exact", "off-1e-6", "off-1e-3", "drops-a-term"])
def test_info_check_measures_how_far_a_namespace_is_from_numpy(relative, agrees, monkeypatch,
                                                               capsys):
    """The number `info --namespace` prints is the real distance from NumPy's weights: none for
    an exact namespace, about the size of an injected matmul error of 1e-6 (agrees, exit 0);
    an error of 1e-3 (which moves the weights by about 3%), or a product that drops a term,
    `differs`, above the float32 tolerance, and exit 1."""
    pytest.importorskip("array_api_strict")
    import re

    from mnist_xp.selfcheck import RELATIVE_TOLERANCE

    if relative != 0.0:
        _matmul_off_by(monkeypatch, relative)
    status = main(["info", "--namespace", "array_api_strict"])
    line = capsys.readouterr().out.splitlines()[-1]
    assert line.startswith("  array_api_strict ")
    number = re.search(r"(?:largest difference|differs by) (\S+) ", line)
    assert number, line
    difference = float(number.group(1))
    tolerance = RELATIVE_TOLERANCE["float32"]
    if agrees:
        assert status == 0 and "agrees" in line and difference <= tolerance
    else:
        assert status == 1 and "differs" in line and difference > tolerance
    if relative == 0.0:
        assert difference == 0.0
    elif relative is not None:
        assert relative / 10 <= difference <= 100 * relative


def test_module_entry_point_and_version():
    result = run_module("--version")
    assert result.returncode == 0 and result.stdout.startswith("mnist-xp ")


def test_console_script_is_installed():
    script = Path(sys.executable).with_name("mnist-xp")
    if not script.exists():
        pytest.skip("not installed with pip install -e . in this interpreter's environment")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "train" in result.stdout


@pytest.mark.parametrize("library", ["torch", "jax", "dask"])
def test_every_backend_trains_evaluates_and_resumes_from_the_cli(library, tiny_dir, tiny_data,
                                                                  tmp_path, capsys):
    importorskip(library)
    checkpoint, model = tmp_path / "run.npz", tmp_path / "model.npz"
    flags = ["--backend", library, "--device", "cpu", "--data-dir", str(tiny_dir)]
    assert main(["train", *FAST, *flags, "--checkpoint", str(checkpoint)]) == 0
    out = capsys.readouterr().out
    assert f"device: {library} " in out and "done: 12 steps" in out
    assert main(["train", "--resume", str(checkpoint), "--steps", "15", "--quiet", *flags,
                 "--save", str(model)]) == 0
    assert "done: 15 steps" in capsys.readouterr().out
    assert main(["evaluate", "--model", str(model), *flags]) == 0
    assert "accuracy on mnist test set (120 images)" in capsys.readouterr().out
    digits = tmp_path / "digits.npy"
    np.save(digits, tiny_data.test_images[:3].reshape(3, 28, 28))
    assert main(["predict", "--model", str(model), str(digits), "--json",
                 "--backend", library, "--device", "cpu"]) == 0
    predicted = [r["digit"] for r in json.loads(capsys.readouterr().out)]
    assert predicted == list(MLP.load(model, numpy_backend()).predict(tiny_data.test_images[:3]))


@pytest.mark.parametrize("flags,message", [
    (["--backend", "numpy", "--device", "cuda"], "NumPy runs on the CPU only"),
    (["--backend", "cupy", "--device", "cpu"], "CuPy runs on CUDA GPUs only"),
    (["--backend", "dask", "--device", "cuda:0"], "--backend dask computes NumPy chunks"),
])
def test_impossible_backend_and_device_exit_2(flags, message):
    result = run_module("train", *FAST, *flags)
    assert result.returncode == 2 and message in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_a_missing_backend_library_exits_2_naming_the_extra(tmp_path):
    blocker = tmp_path / "nojax"
    blocker.mkdir()
    (blocker / "jax.py").write_text("raise ImportError('No module named jax', name='jax')\n")
    result = run_module("train", *FAST, "--backend", "jax", env={"PYTHONPATH": str(blocker)})
    assert result.returncode == 2
    assert result.stderr.strip() == 'error: --backend jax needs jax: pip install "mnist-xp[jax]"'


def test_jax_float64_needs_x64_and_says_so_before_loading_data(tiny_dir, capsys, monkeypatch):
    importorskip("jax")
    import jax

    if jax.config.jax_enable_x64:
        pytest.skip("x64 is on in this process")
    monkeypatch.setattr("mnist_xp.cli.load_dataset", None)  # calling it would fail the test
    code = main(["train", *FAST, "--backend", "jax", "--device", "cpu", "--dtype", "float64",
                 "--data-dir", str(tiny_dir)])
    assert code == 2 and "JAX_ENABLE_X64=1" in capsys.readouterr().err


def test_info_check_compares_every_installed_backend_with_numpy(capsys):
    """A line for every library and device, in order: `agrees`, with a difference under the
    float32 tolerance of 1e-4, wherever the library imports (and, on CUDA, sees a GPU);
    `not installed` only where it does not import; `unavailable` and the reason where it
    imports but has no GPU."""
    import importlib.util
    import re

    from conftest import cupy_available, jax_gpu_available, torch_cuda_available

    assert main(["info", "--check"]) == 0
    lines = capsys.readouterr().out.split("\ncheck: ", 1)[1].splitlines()[1:]
    pairs = [("numpy", "cpu"), ("torch", "cpu"), ("jax", "cpu"), ("dask", "cpu"),
             ("cupy", "cuda"), ("torch", "cuda"), ("jax", "cuda")]
    assert len(lines) == len(pairs), lines
    sees_a_gpu = {"cupy": cupy_available, "torch": torch_cuda_available,
                  "jax": jax_gpu_available}
    for (library, device), line in zip(pairs, lines):
        label, _, verdict = line.strip().partition(": ")
        assert label.startswith(f"{library} on {device}"), line
        if importlib.util.find_spec(library) is None:
            assert verdict.startswith("not installed"), line
        elif device == "cuda" and not sees_a_gpu[library]():
            assert label == f"{library} on cuda" and re.fullmatch(r"unavailable: .{10,}",
                                                                 verdict), line
        else:
            agrees = re.fullmatch(r"agrees \(largest difference (\S+) of the largest weight\)",
                                  verdict)
            assert agrees and float(agrees.group(1)) <= 1e-4, line


def test_info_check_of_a_namespace_that_differs_exits_1(monkeypatch, capsys):
    """A library whose arithmetic is off is reported with the size of the difference."""
    from mnist_xp import selfcheck

    real = selfcheck.train

    def off_by_a_little(data, backend, config, **kwargs):
        model, history = real(data, backend, config, **kwargs)
        if backend.library == "array_api_strict":
            model.params = [p * 1.01 for p in model.params]
        return model, history

    monkeypatch.setattr(selfcheck, "train", off_by_a_little)
    assert main(["info", "--namespace", "array_api_strict"]) == 1
    assert "differs by 1.0e-02" in capsys.readouterr().out



def test_a_closed_pipe_ends_quietly():
    """`mnist-xp info | head -1`: a reader that leaves early. Here it leaves before the first
    line (the read end is closed at once), so the write fails every time: no error line, no
    traceback, and the status of a program that SIGPIPE ended (141), as other tools."""
    process = subprocess.Popen([sys.executable, "-m", "mnist_xp", "info"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()
    err = process.stderr.read().decode()
    assert process.wait(timeout=120) == 141, err
    assert err == ""
