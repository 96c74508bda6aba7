"""What each library's own way of running needs: JAX compiles the step once, Dask computes
once per step with a graph that does not grow, and every backend's step is the one bench times."""

from __future__ import annotations

import numpy as np
import pytest

from mnist_xp import Config, train
from mnist_xp.model import MLP
from mnist_xp.step import TrainStep, to_device

from conftest import importorskip, make_backend


def test_jax_compiles_the_step_once_per_configuration(tiny_data):
    importorskip("jax")
    backend = make_backend("jax-cpu")  # a new Backend has built nothing yet
    config = Config(hidden=(8,), optimizer="adam", steps=20)
    assert TrainStep(backend, config).traces == 0
    train(tiny_data, backend, config, eval_every=10, log_every=5)
    traces = TrainStep(backend, config).traces
    assert traces == 2  # with and without the loss value
    train(tiny_data, backend, config.replace(steps=60), eval_every=30, log_every=7)
    assert TrainStep(backend, config).traces == traces  # no retracing, in a new run either
    minibatch = config.replace(batch_size=64, steps=40)  # 240 rows: batches of 64 and 48
    train(tiny_data, backend, minibatch, eval_every=40, log_every=3)
    # the same code, so the same compiled step: two new batch shapes, with and without loss
    assert TrainStep(backend, minibatch).traces == traces + 4
    assert TrainStep(make_backend("jax-cpu"), config).traces == 0  # built per backend


def test_dask_computes_once_per_step_and_its_graph_stays_flat(tiny_data):
    importorskip("dask")
    from dask.callbacks import Callback

    backend = make_backend("dask-cpu")
    config = Config(hidden=(8,), optimizer="adam")
    split = to_device(backend, tiny_data.train_images, tiny_data.train_labels, "float32",
                      chunk_rows=64)
    assert split.X.numblocks == (4, 1)  # 240 rows in chunks of 64
    step = TrainStep(backend, config)
    params = MLP.initialise(config, backend).params
    state = step.initial_state(params)
    computations, reads, graph_sizes = [], [], []
    for _ in range(20):
        with Callback(start=lambda graph: computations.append(len(graph))):
            params, state, loss = step(params, state, split, with_loss=True)
        graph_sizes.append(sum(len(a.__dask_graph__()) for a in [*params, state["t"]]))
        with Callback(start=lambda graph: reads.append(len(graph))):
            float(loss)  # computed with the step: reading it only fetches the stored value
    assert len(computations) == 20 and min(computations) > 50  # the whole step, each time
    assert max(reads) <= 2
    assert graph_sizes == [graph_sizes[0]] * 20 and graph_sizes[0] == len(params) + 1


@pytest.mark.parametrize("kind", ["numpy", "torch-cpu", "jax-cpu", "dask-cpu"])
def test_bench_times_the_training_step(kind, monkeypatch):
    """bench builds the same TrainStep as train: its case names the library and whether the
    step was compiled; it runs that step once under the memory count, then warmup + repeats
    times over all the rows without the loss, each from the weights the last one made, and
    every step moves every parameter."""
    from mnist_xp.bench import measure_case

    backend = make_backend(kind)
    calls = []
    run_step = TrainStep.__call__

    def recording(self, params, state, batch, with_loss=False):
        given = [backend.to_numpy(p) for p in params]  # host copies, before and after
        new_params, new_state, loss = run_step(self, params, state, batch, with_loss)
        calls.append((given, [backend.to_numpy(p) for p in new_params], batch.rows, with_loss))
        return new_params, new_state, loss

    with monkeypatch.context() as patch:
        patch.setattr(TrainStep, "__call__", recording)
        case = measure_case(backend, (8,), rows=256, repeats=2, warmup=1)
    assert case["library"] == backend.library and case["step_ms"] > 0
    assert case["compiled"] == (backend.library == "jax")
    assert np.isfinite(case["step_over_products"])
    assert [(rows, with_loss) for _, _, rows, with_loss in calls] == [(256, False)] * (1 + 1 + 2)
    for (_, previous, _, _), (given, _, _, _) in zip(calls, calls[1:]):
        for a, b in zip(previous, given):  # each step starts where the last one ended
            np.testing.assert_array_equal(a, b)
    for given, made, _, _ in calls:
        assert not any(np.array_equal(a, b) for a, b in zip(given, made))


def test_ndonnx_trains_like_numpy(tiny_data):
    """ndonnx (ONNX arrays that carry their values) where it installs: it is slow (an ONNX
    evaluation per operation), so a few steps of one small network."""
    from mnist_xp import Backend
    from mnist_xp.backends import numpy_backend

    ndonnx = importorskip("ndonnx")
    config = Config(hidden=(8,), optimizer="adam", lr=1e-2, steps=3)
    model, history = train(tiny_data, Backend(ndonnx), config, log_every=1)
    reference, ref_history = train(tiny_data, numpy_backend(), config, log_every=1)
    for got, want in zip(model.host_params(), reference.host_params()):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    assert history.final_loss == pytest.approx(ref_history.final_loss, rel=1e-5)
