"""Training, evaluation and models through the Python API, on every backend."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest

from mnist_xp import MLP, PRESETS, Config, DataError, DivergenceError, UsageError, evaluate, train
from mnist_xp.backends import numpy_backend
from mnist_xp.data import Dataset
from mnist_xp.errors import DeviceMemoryError
from mnist_xp.model import init_params, scale_images
from mnist_xp.step import TrainStep

from conftest import assert_close, traced_peak


def test_same_seed_same_initial_weights(backend_dtype):
    backend, dtype = backend_dtype
    config = Config(hidden=(16, 8), dtype=dtype, seed=3)
    model = MLP.initialise(config, backend)
    for got, want in zip(model.host_params(), init_params(config)):
        assert got.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(got, want)


# Between them: every activation, both outputs, both losses, every optimizer, full batch and
# shuffled mini-batches (one with a short last batch), and L2 weight decay.
AGREEMENT = {
    "relu-ce-sgd-full": Config(hidden=(32,), optimizer="sgd", lr=0.5),
    "sigmoid-mse-momentum-mini": Config(hidden=(24,), activation="sigmoid", loss="mse",
                                        optimizer="momentum", lr=0.5, batch_size=64),
    "tanh-sigmoid-mse-adam-full": Config(hidden=(16, 8), activation="tanh", output="sigmoid",
                                         loss="mse", optimizer="adam", lr=3e-3,
                                         weight_decay=1e-3),
    "relu-ce-adam-mini": Config(hidden=(16,), optimizer="adam", lr=3e-3, batch_size=50,
                                weight_decay=1e-4),
    "tanh-ce-momentum-full": Config(hidden=(20,), activation="tanh", optimizer="momentum",
                                    lr=0.1),
}


@pytest.mark.parametrize("case", AGREEMENT)
def test_five_steps_agree_with_numpy(backend_dtype, tiny_data, case):
    backend, dtype = backend_dtype
    config = AGREEMENT[case].replace(dtype=dtype, steps=5)
    model, history = train(tiny_data, backend, config, eval_every=5, log_every=1)
    reference, ref_history = train(tiny_data, numpy_backend(), config, eval_every=5)
    for got, want, initial in zip(model.host_params(), reference.host_params(),
                                  init_params(config)):
        assert got.dtype == np.dtype(dtype)
        assert_close(got, want, dtype, scale=10)
        assert not np.array_equal(got, initial)  # the update reached the model
    assert_close(history.final_loss, ref_history.final_loss, dtype)
    assert history.last["test_accuracy"] == ref_history.last["test_accuracy"]


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
def test_one_step_moves_the_weights(backend_dtype, tiny_data, optimizer):
    """The test that would have caught updates lost on immutable (JAX) and lazy (Dask) arrays:
    after a single step every weight matrix differs from its initial value."""
    backend, dtype = backend_dtype
    config = Config(hidden=(8,), activation="tanh", optimizer=optimizer, lr=0.1, dtype=dtype,
                    steps=1)  # tanh: no unit is dead at the start, every weight has a gradient
    model, _ = train(tiny_data, backend, config)
    for got, initial in zip(model.host_params()[::2], init_params(config)[::2]):
        assert np.count_nonzero(got != initial) > 0.9 * got.size


def test_scaled_images_on_every_backend(backend_dtype):
    backend, dtype = backend_dtype
    images = np.arange(256 * 784, dtype=np.int64).reshape(256, 784).astype(np.uint8)
    X = backend.to_numpy(scale_images(backend, images, dtype))
    assert X.dtype == np.dtype(dtype) and X.shape == (256, 784)
    assert_close(X, images.astype(dtype) / 255, dtype)


def test_scaling_holds_one_float_copy_at_a_time():
    """The cast copy is divided in place: a second float temporary would double the peak."""
    images = np.zeros((20_000, 784), dtype=np.uint8)
    with traced_peak() as peak:
        X = scale_images(numpy_backend(), images, "float32")
    assert peak[0] < 1.25 * X.nbytes


def test_overfits_100_samples(backend_dtype):
    """Random images with random labels: only memorising reaches 100%."""
    backend, dtype = backend_dtype
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(100, 784), dtype=np.uint8)
    labels = rng.integers(0, 10, size=100).astype(np.uint8)
    data = Dataset(images, labels, images[:10], labels[:10])
    config = Config(hidden=(64,), optimizer="adam", lr=3e-3, steps=150, dtype=dtype)
    model, history = train(data, backend, config)
    assert history.last["train_accuracy"] == 1.0
    assert evaluate(model, images, labels).accuracy == 1.0


def test_learns_the_synthetic_digits(tiny_data):
    model, history = train(tiny_data, numpy_backend(), "relu10", steps=60, lr=0.05)
    assert history.last["test_accuracy"] > 0.9
    assert [r["step"] for r in history.records] == list(range(6, 61, 6))
    assert history.seconds > 0 and history.steps == 60 and math.isfinite(history.final_loss)


def test_minibatches_count_epochs(tiny_data):
    config = Config(hidden=(16,), optimizer="sgd", lr=0.05, batch_size=50, epochs=10)
    model, history = train(tiny_data, numpy_backend(), config)
    assert history.steps == 10 * math.ceil(240 / 50)
    assert history.last["test_accuracy"] > 0.9


def test_minibatches_on_the_stand_in_gpu(tiny_data):
    from conftest import make_backend

    config = Config(hidden=(16,), optimizer="sgd", lr=0.1, batch_size=64, epochs=2)
    _, history = train(tiny_data, make_backend("strict-device1"), config)
    assert history.steps == 2 * 4


def test_chunked_training_is_full_batch_training(tiny_data):
    config = Config(hidden=(32,), dtype="float64", steps=10)
    whole, _ = train(tiny_data, numpy_backend(), config, chunk_size=10_000)
    chunked, _ = train(tiny_data, numpy_backend(), config, chunk_size=7)
    for a, b in zip(whole.host_params(), chunked.host_params()):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_divergence_stops_with_advice(backend_dtype, tiny_data):
    backend, dtype = backend_dtype
    with pytest.raises(DivergenceError, match="lower the learning rate"):
        train(tiny_data, backend, "relu10", lr=1e30 if dtype == "float32" else 1e300, steps=6,
              log_every=1, dtype=dtype)


def _out_of_memory(kind: str) -> BaseException:
    """What each library raises when the device's memory runs out."""
    if kind.startswith("torch"):
        import torch

        return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    if kind.startswith("jax"):  # XlaRuntimeError, a RuntimeError
        return RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 2.1GiB")
    return MemoryError()


@pytest.mark.parametrize("kind", ["numpy", "torch-cpu", "jax-cpu", "dask-cpu"])
def test_out_of_memory_on_every_backend(kind, tiny_data, monkeypatch):
    from conftest import make_backend

    backend = make_backend(kind)

    def exhausted(self, *args, **kwargs):
        raise _out_of_memory(kind)

    monkeypatch.setattr(TrainStep, "__call__", exhausted)
    with pytest.raises(DeviceMemoryError, match=r"about \d+\.\d\d GiB .*--chunk-size"):
        train(tiny_data, backend, "relu10", steps=3)

    def broken(self, *args, **kwargs):
        raise RuntimeError("something else")

    monkeypatch.setattr(TrainStep, "__call__", broken)
    with pytest.raises(RuntimeError, match="something else"):  # not mistaken for memory
        train(tiny_data, backend, "relu10", steps=3)


@pytest.mark.parametrize("overrides,message", [
    ({"lr": -1.0}, "learning rate"),
    ({"hidden": (0,)}, "at least 1"),
    ({"steps": 0}, "steps must be at least 1"),
    ({"batch_size": 10_000}, "larger than the 240"),
    ({"loss": "ce", "output": "sigmoid"}, "needs the softmax output"),
    ({"optimizer": "rmsprop"}, "unknown optimizer"),
    ({"colour": "blue"}, "unknown setting"),
])
def test_bad_settings(tiny_data, overrides, message):
    with pytest.raises(UsageError, match=message):
        train(tiny_data, numpy_backend(), "best", **overrides)


def test_unknown_preset(tiny_data):
    with pytest.raises(UsageError, match="unknown preset 'nope'"):
        train(tiny_data, numpy_backend(), "nope")


def test_evaluate_confusion(tiny_data):
    model, _ = train(tiny_data, numpy_backend(), "relu10", steps=30)
    result = evaluate(model, tiny_data.test_images, tiny_data.test_labels)
    assert result.confusion.shape == (10, 10) and result.confusion.sum() == 120
    assert result.accuracy == pytest.approx(np.trace(result.confusion) / 120)
    np.testing.assert_array_equal(result.confusion.sum(axis=1), np.bincount(tiny_data.test_labels))


def test_save_and_load(backend_dtype, tiny_data, tmp_path):
    backend, dtype = backend_dtype
    model, _ = train(tiny_data, backend, "relu10", steps=5, dtype=dtype)
    path = tmp_path / "model.npz"
    model.save(path, extra={"history": [{"step": 5, "loss": 0.5, "train_accuracy": 0.9,
                                         "test_accuracy": 0.8}]})
    assert [p.name for p in tmp_path.iterdir()] == ["model.npz"]  # no temp file left
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # as open() would, not mkstemp's 0600
    loaded = MLP.load(path, backend)
    assert loaded.config == model.config
    images = tiny_data.test_images.reshape(-1, 28, 28)
    np.testing.assert_array_equal(loaded.predict(images), model.predict(tiny_data.test_images))
    probs = loaded.predict_proba(tiny_data.test_images)
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)


def test_load_refuses_bad_files(tmp_path, tiny_data):
    model, _ = train(tiny_data, numpy_backend(), "relu10", steps=1)
    good = tmp_path / "good.npz"
    model.save(good)
    with np.load(good) as archive:
        arrays = dict(archive)
    cases = {
        "pickle.npz": {**arrays, "param0": np.array([object()], dtype=object)},
        "shapes.npz": {**arrays, "param0": np.zeros((784, 11), np.float32)},
        "dtype.npz": {**arrays, "param1": arrays["param1"].astype(np.float64)},
        "version.npz": {**arrays, "meta": np.array(json.dumps(
            {**json.loads(str(arrays["meta"])), "format_version": 99}))},
    }
    messages = {"pickle.npz": "not an mnist-xp model", "shapes.npz": "do not match",
                "dtype.npz": "not all float32", "version.npz": "version 99"}
    for name, content in cases.items():
        np.savez(tmp_path / name, **content)
        with pytest.raises(DataError, match=messages[name]):
            MLP.load(tmp_path / name, numpy_backend())
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(DataError, match="not an mnist-xp model"):
        MLP.load(tmp_path / "text.npz", numpy_backend())
    with pytest.raises(DataError, match="not found"):
        MLP.load(tmp_path / "absent.npz", numpy_backend())


def _presets_table() -> dict[str, dict[str, str]]:
    """docs/command-line.md's presets table: preset -> column -> cell."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "command-line.md").read_text()
    lines = text[text.index("| preset | network |"):].splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        cells = dict(zip(header, (cell.strip() for cell in line.strip("|").split("|"))))
        rows[cells["preset"]] = cells
    return rows


def test_the_presets_table_describes_the_presets():
    table = _presets_table()
    assert set(table) == set(PRESETS)
    for name, row in table.items():
        config = PRESETS[name]
        assert [int(n) for n in re.findall(r"\d+", row["network"])] == list(config.sizes), name
        how = row["optimizer"]
        assert float(re.search(r"lr ([\d.e-]+)", how)[1]) == config.lr, name
        length = (f"{config.epochs} epochs" if config.batch_size else f"{config.steps} steps")
        assert length in how, name
        assert ("full-batch" in how) == (config.batch_size is None), name
        if config.batch_size:
            assert f"batch {config.batch_size}" in how, name


@pytest.mark.real_data
@pytest.mark.parametrize("name", ["dumbest", "sigmoid128", "relu10"])
def test_the_quick_presets_reach_what_the_table_says_they_must(name, real_data_dir):
    """The presets that train in seconds, run whole on real MNIST; `best` and `record` take
    minutes: `mnist-xp bench --accuracy-preset best record` times them to their targets."""
    from mnist_xp import load_dataset

    must = float(re.fullmatch(r"≥ ([\d.]+)%", _presets_table()[name]["must reach"])[1]) / 100
    _, history = train(load_dataset(data_dir=real_data_dir), numpy_backend(), name)
    assert history.last["test_accuracy"] >= must
