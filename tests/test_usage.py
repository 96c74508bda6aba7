"""What a demanding user runs into: no finished run lost, no flag silently ignored, no wrong
answer without a word, every usage error before any data is read, pictures from a phone."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from mnist_xp import MLP, UsageError
from mnist_xp.backends import numpy_backend
from mnist_xp.checkpoint import load_checkpoint
from mnist_xp.cli import main
from mnist_xp.modelfile import read_model_file

from helpers import kaggle_csv

FAST = ["--preset", "relu10", "--steps", "6", "--lr", "0.05", "--quiet", "--device", "cpu"]


@pytest.fixture
def model_file(tiny_dir, tmp_path) -> Path:
    path = tmp_path / "model.npz"
    assert main(["train", *FAST, "--data-dir", str(tiny_dir), "--save", str(path)]) == 0
    return path


def _no_data(monkeypatch):
    """Loading data now fails the test: the error had to come first."""
    def refuse(*args, **kwargs):
        raise AssertionError("data was loaded before the usage error")
    monkeypatch.setattr("mnist_xp.cli.load_dataset", refuse)


# --- outputs: checked before any work; a finished run is never lost ---------------------------

@pytest.mark.parametrize("flag", ["--save", "--metrics-out", "--checkpoint"])
def test_a_folder_given_as_an_output_file_is_refused_first(flag, tiny_dir, tmp_path, capsys,
                                                          monkeypatch):
    _no_data(monkeypatch)
    assert main(["train", *FAST, "--data-dir", str(tiny_dir), flag, str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {flag} {tmp_path}: is a folder; give a file path, e.g. ")
    assert err.count("\n") == 1


@pytest.mark.parametrize("flags,message", [
    (["--save", "{d}/a.npz", "--checkpoint", "{d}/a.npz"],
     "--checkpoint {d}/a.npz is also --save's file"),
    (["--save", "{d}/a.npz", "--metrics-out", "{d}/./a.npz"],
     "--metrics-out {d}/a.npz is also --save's file"),
    (["--resume", "{d}/run.npz", "--save", "{d}/run.npz"],
     "--save {d}/run.npz is the checkpoint given to --resume"),
])
def test_two_outputs_in_one_file_are_refused_first(flags, message, tiny_dir, tmp_path, capsys,
                                                   monkeypatch):
    _no_data(monkeypatch)
    (tmp_path / "run.npz").write_bytes(b"")
    flags = [f.format(d=tmp_path) for f in flags]
    assert main(["train", *FAST, "--data-dir", str(tiny_dir), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message.format(d=tmp_path)}") and err.count("\n") == 1


def test_bench_outputs_are_checked_too(tmp_path, capsys):
    assert main(["bench", "--device", "cpu", "--no-accuracy", "--json", str(tmp_path)]) == 2
    assert f"--json {tmp_path}: is a folder" in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["--device", "cuda", "--backend", "numpy"],
     "nothing to benchmark for --device cuda --backend numpy: NumPy runs on the CPU only"),
    (["--device", "cpu", "--backend", "cupy"],
     "nothing to benchmark for --device cpu --backend cupy: CuPy runs on CUDA GPUs only"),
    (["--device", "auto"], "bench --device auto: use all (the CPU, and CUDA when usable)"),
    (["--device", "tpu"], "bench --device tpu: use all"),
])
def test_bench_says_why_a_device_and_backend_give_nothing_to_time(args, message, capsys):
    assert main(["bench", *args, "--no-accuracy"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1


def _writes_fail(monkeypatch, target, error):
    """Every write to `target` raises `error` (a full disk, a folder gone); others go ahead."""
    import mnist_xp.files as files

    real = files.atomic_write

    def failing(path, write):
        if Path(path) == target:
            raise error
        return real(path, write)

    monkeypatch.setattr(files, "atomic_write", failing)


def test_a_failed_final_write_keeps_the_model_and_says_where(tiny_dir, tmp_path, capsys,
                                                             monkeypatch):
    """The disk fills (or the folder goes) while training: the run is kept elsewhere."""
    target = tmp_path / "model.npz"
    _writes_fail(monkeypatch, target, OSError(errno.ENOSPC, "No space left on device"))
    assert main(["train", *FAST, "--data-dir", str(tiny_dir), "--save", str(target)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --save {target} could not be written; it was kept at ")
    kept = Path(err.rsplit(" ", 1)[-1])
    try:
        assert read_model_file(kept).config.hidden == (10,) and not target.exists()
    finally:
        kept.unlink()


def test_a_checkpoint_that_cannot_be_written_is_kept_and_the_run_goes_on(
        tiny_dir, tmp_path, capsys, monkeypatch):
    """Its folder goes away mid-run: each checkpoint is kept in the temporary folder with a
    warning, in one copy that each later one replaces; the run finishes and --save is
    written, and the run ends non-zero, naming where its checkpoint is; the copy resumes."""
    target, saved = tmp_path / "gone" / "run.npz", tmp_path / "model.npz"
    _writes_fail(monkeypatch, target, FileNotFoundError(errno.ENOENT, "No such file"))
    (tmp_path / "gone").mkdir()
    assert main(["train", *FAST, "--data-dir", str(tiny_dir), "--checkpoint", str(target),
                 "--checkpoint-every", "3", "--save", str(saved)]) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line]
    warnings, error = lines[:-1], lines[-1]
    assert len(warnings) == 2  # steps 3 and 6
    for line, step in zip(warnings, (3, 6)):
        assert line.startswith(f"warning: --checkpoint {target} could not be written; the "
                               f"checkpoint of step {step} was kept at ")
    kept = {Path(line.split(" was kept at ")[1].split(" ")[0]) for line in warnings}
    assert len(kept) == 1  # one copy, replaced
    (copy,) = kept
    try:
        assert error == (f"error: --checkpoint {target} could not be written; the checkpoint "
                         f"of step 6 is kept at {copy} (--resume it)")
        assert load_checkpoint(copy).step == 6
        assert read_model_file(saved).config.hidden == (10,) and not target.exists()
    finally:
        copy.unlink()


def test_atomic_write_keeps_the_mode_syncs_and_sweeps_what_a_killed_writer_left(
        tmp_path, monkeypatch):
    """A file written over keeps its mode (0600 stays 0600); the data and the folder are
    fsynced; the process umask is never changed; a .part file of a writer that is gone is
    removed, one of a live writer is not."""
    import mnist_xp.files as files

    path = tmp_path / "ck.npz"
    path.write_bytes(b"old")
    path.chmod(0o600)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    stale = tmp_path / f".ck.npz.{dead}.0badcafe.part"
    live = tmp_path / f".ck.npz.{os.getppid()}.0badcafe.part"
    stale.write_bytes(b"half")
    live.write_bytes(b"half")
    synced, umasks = [], []
    real_fsync = os.fsync
    monkeypatch.setattr(files.os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    monkeypatch.setattr(files.os, "umask", lambda mask: umasks.append(mask) or 0o022)
    files.atomic_write(path, lambda handle: handle.write(b"new"))
    assert path.read_bytes() == b"new" and path.stat().st_mode & 0o777 == 0o600
    assert len(synced) == 2 and not umasks  # the file and its folder; umask untouched
    assert not stale.exists() and live.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ck.npz", live.name])


# --- every flag honoured or refused --------------------------------------------------------

def test_steps_on_an_epoch_preset_means_steps(tiny_dir, capsys):
    assert main(["train", "--preset", "sigmoid128", "--steps", "7", "--quiet", "--device", "cpu",
                 "--data-dir", str(tiny_dir)]) == 0
    out = capsys.readouterr().out
    assert "batch 64, 7 steps" in out and "done: 7 steps" in out


@pytest.mark.parametrize("flags,message", [
    (["--steps", "2", "--epochs", "5"], "--steps and --epochs both set the run's length"),
    (["--epochs", "5"], "epochs count passes over shuffled mini-batches"),
    (["--preset", "sigmoid128", "--batch-size", "full"], "epochs count passes over shuffled"),
    (["--momentum", "0.5"],
     "--momentum is for --optimizer momentum or nesterov; this run uses sgd"),
    (["--eval-every", "0"], "--eval-every 0: must be at least 1"),
    (["--chunk-size", "-3"], "--chunk-size -3: must be at least 1"),
    (["--batch-size", "70000"], "batch size 70000 is larger than the 240 training images"),
])
def test_a_flag_that_would_be_ignored_is_refused_before_the_data(tiny_dir, capsys, monkeypatch,
                                                                  flags, message):
    _no_data(monkeypatch)
    base = ["train", "--preset", "relu10", "--quiet", "--device", "cpu", "--data-dir",
            str(tiny_dir)]
    assert main(base + flags) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_the_same_command_resumes_and_a_different_flag_names_the_checkpoint(tiny_dir, tmp_path,
                                                                            capsys):
    checkpoint = tmp_path / "run.npz"
    command = ["train", "--preset", "relu10", "--lr", "0.05", "--steps", "4", "--quiet",
               "--device", "cpu", "--data-dir", str(tiny_dir), "--checkpoint", str(checkpoint)]
    assert main(command) == 0
    assert main([*command, "--resume", str(checkpoint), "--steps", "6"]) == 0
    out = capsys.readouterr().out
    assert f"resuming {checkpoint} at step 4" in out
    assert "done: 6 steps, 2 of them in this run, in " in out
    assert main([*command, "--resume", str(checkpoint), "--steps", "8", "--lr", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "--lr 0.1 (the checkpoint's: 0.05)" in err
    assert main(["train", "--resume", str(checkpoint), "--preset", "best", "--steps", "8",
                 "--data-dir", str(tiny_dir), "--device", "cpu"]) == 2
    assert "--hidden 1024,256 (the checkpoint's: 10)" in capsys.readouterr().err
    assert main(["train", "--resume", str(checkpoint), "--steps", "8", "--dataset",
                 "fashion-mnist", "--data-dir", str(tiny_dir), "--device", "cpu"]) == 2
    assert "the checkpoint's run trains on mnist" in capsys.readouterr().err


# --- the model knows its data; predict takes what the CLI takes ------------------------------

def test_a_model_records_its_dataset_and_evaluate_uses_it(tiny_dir, tmp_path, capsys):
    path = tmp_path / "fashion.npz"
    assert main(["train", *FAST, "--dataset", "fashion-mnist", "--data-dir", str(tiny_dir),
                 "--save", str(path)]) == 0
    saved = read_model_file(path)
    assert saved.dataset == "fashion-mnist" and "uint8" in saved.meta["input"]
    capsys.readouterr()
    assert main(["evaluate", "--model", str(path), "--data-dir", str(tiny_dir),
                 "--device", "cpu"]) == 0
    out = capsys.readouterr()
    assert "trained on fashion-mnist" in out.out and "fashion-mnist test set" in out.out
    assert main(["evaluate", "--model", str(path), "--data-dir", str(tiny_dir), "--dataset",
                 "mnist", "--device", "cpu"]) == 0
    assert "was trained on fashion-mnist; using mnist" in capsys.readouterr().err
    np.save(tmp_path / "x.npy", np.zeros((1, 784), np.uint8))
    assert main(["predict", "--model", str(path), str(tmp_path / "x.npy"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["class"] in (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
        "Bag", "Ankle boot")


def test_predict_takes_floats_and_single_images_and_refuses_the_rest(model_file, tiny_data):
    model = MLP.load(model_file, numpy_backend())
    images = tiny_data.test_images[:20]
    expected = model.predict(images)
    np.testing.assert_array_equal(model.predict(images / 255.0), expected)
    np.testing.assert_array_equal(model.predict(images.astype(np.float32) / 255), expected)
    assert model.predict(images[3]) == expected[3]  # (784,): one image, one int
    assert model.predict(images[3].reshape(28, 28)) == expected[3]
    assert model.predict_proba(images[3]).shape == (10,)
    np.testing.assert_array_equal(model.predict(images.astype(np.int64)), expected)
    nan = np.full((2, 784), np.nan)
    for bad, message in [(images.astype(np.float64), r"must lie in \[0, 1\]"),
                         (images.astype(np.int64) + 1, "integer images must lie in 0..255"),
                         (images > 0, r"uint8 0..255 or floats in \[0, 1\]; got bool"),
                         (nan, "got no values and NaN or infinity"),
                         (images[:, :700], "must be shaped"), (np.zeros((2, 3, 28, 28)),
                                                               "must be shaped")]:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the one-line error, and no warning beside it
            with pytest.raises(UsageError, match=message):
                model.predict(bad)


def test_an_npy_file_takes_what_model_predict_takes(model_file, tiny_data, tmp_path, capsys):
    """One image shaped (784,), integer pixels: the same as model.predict; and its refusals."""
    model = MLP.load(model_file, numpy_backend())
    one, ints = tmp_path / "one.npy", tmp_path / "ints.npy"
    np.save(one, tiny_data.test_images[3])
    np.save(ints, tiny_data.test_images[:2].astype(np.int64))
    (tmp_path / "big.npy").write_bytes(b"")
    np.save(tmp_path / "big.npy", tiny_data.test_images[:2].astype(np.float64))
    capsys.readouterr()
    assert main(["predict", "--model", str(model_file), str(one), str(ints),
                 str(tmp_path / "big.npy")]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines()[0].split()[1] == str(model.predict(tiny_data.test_images[3]))
    assert len(out.splitlines()) == 3
    assert err.startswith(f"error: {tmp_path / 'big.npy'}: float images must lie in [0, 1]")


def test_predict_reports_every_input_and_a_line_per_bad_one(model_file, tiny_data, tmp_path,
                                                            capsys):
    good = tmp_path / "good.npy"
    np.save(good, tiny_data.test_images[:2].reshape(2, 28, 28))
    (tmp_path / "bad.npy").write_bytes(b"junk")
    capsys.readouterr()
    assert main(["predict", "--model", str(model_file), str(good), str(tmp_path / "bad.npy"),
                 str(good)]) == 1
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 4  # both arrays' two digits
    assert err.count("\n") == 1 and "bad.npy: not a readable .npy array" in err


def test_preprocessed_pictures_with_the_same_name_do_not_overwrite(model_file, tmp_path,
                                                                    tiny_data, capsys):
    pytest.importorskip("PIL")
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        np.save(tmp_path / folder / "7.npy",
                tiny_data.test_images[int(folder == "b")].reshape(28, 28))
    shown = tmp_path / "shown"
    assert main(["predict", "--model", str(model_file), "--show-preprocessed", str(shown),
                 str(tmp_path / "a" / "7.npy"), str(tmp_path / "b" / "7.npy")]) == 0
    assert sorted(p.name for p in shown.iterdir()) == ["7.png", "7_2.png"]


def test_without_pillow_show_preprocessed_is_refused_and_makes_no_folder(model_file, tmp_path,
                                                                         capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)
    np.save(tmp_path / "x.npy", np.zeros((28, 28), np.uint8))
    shown = tmp_path / "shown"
    assert main(["predict", "--model", str(model_file), str(tmp_path / "x.npy"),
                 "--show-preprocessed", str(shown)]) == 2
    assert 'pip install "mnist-xp[image]"' in capsys.readouterr().err and not shown.exists()


# --- smaller things ------------------------------------------------------------------------

def test_evaluate_and_report_need_only_the_test_files(model_file, tiny_dir, capsys):
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        (tiny_dir / f"{stem}.gz").unlink()
    assert main(["evaluate", "--model", str(model_file), "--data-dir", str(tiny_dir),
                 "--device", "cpu"]) == 0
    assert "(120 images)" in capsys.readouterr().out
    for command in ("evaluate", "report"):  # and their --data-dir help says so
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "two test IDX files" in " ".join(capsys.readouterr().out.split())


def test_evaluate_on_an_unlabelled_csv_points_at_predict(model_file, tiny_data, tmp_path,
                                                         capsys):
    unlabelled = kaggle_csv(tmp_path / "test.csv", tiny_data.test_images[:3], None)
    assert main(["evaluate", "--model", str(model_file), "--csv", str(unlabelled)]) == 2
    assert f"mnist-xp predict --model {model_file} {unlabelled}" in capsys.readouterr().err


def test_a_csv_with_a_byte_order_mark_is_read(tmp_path, tiny_data):
    from mnist_xp import read_kaggle_csv

    path = kaggle_csv(tmp_path / "train.csv", tiny_data.test_images[:3],
                      tiny_data.test_labels[:3])
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    images, labels = read_kaggle_csv(path)
    np.testing.assert_array_equal(images, tiny_data.test_images[:3])


def test_a_failed_download_is_one_line(tmp_path, monkeypatch):
    from mnist_xp import datasets
    from mnist_xp.datasets import DatasetSpec, load_dataset
    from mnist_xp.errors import DownloadError

    dead = (f"file://{tmp_path}/nowhere/", f"file://{tmp_path}/neither/")
    spec = datasets.DATASETS["mnist"]
    monkeypatch.setitem(datasets.DATASETS, "dead", DatasetSpec("dead", dead, spec.payload_md5))
    monkeypatch.setenv("MNIST_XP_DATA_DIR", str(tmp_path / "cache"))
    with pytest.raises(DownloadError) as failure:
        load_dataset("dead")
    assert "\n" not in str(failure.value) and "nowhere" in str(failure.value)
    assert "neither" in str(failure.value) and "by hand" in str(failure.value)


def test_train_prints_its_pace_and_help_names_the_preset_defaults(tiny_dir, capsys):
    """One pace line, from the median of steps 2 to 6 of 20 (the first pays one-off costs):
    14 steps and 7 evaluations left (every 2 steps, from 8 to 20), and the time it gives is
    what they cost at its figures (as rounded for printing)."""
    import re

    assert main(["train", *FAST, "--steps", "20", "--data-dir", str(tiny_dir)]) == 0
    paces = [line for line in capsys.readouterr().out.splitlines() if line.startswith("pace")]
    assert len(paces) >= 1 and paces[0].startswith("pace: "), paces
    pace = re.fullmatch(r"pace: (\S+) (ms|s) per step \(median of (\d)\), (\S+) (ms|s) per "
                        r"evaluation; the (\d+) steps and (\d+) evaluations left take about "
                        r"(\d+) (s|min)", paces[0])
    assert pace, paces[0]
    each = float(pace[1]) / (1e3 if pace[2] == "ms" else 1)
    evaluation = float(pace[4]) / (1e3 if pace[5] == "ms" else 1)
    left, rounding = (float(pace[8]) * 60, 30) if pace[9] == "min" else (float(pace[8]), 0.5)
    assert int(pace[3]) == 5 and int(pace[6]) == 14 and int(pace[7]) == 7
    assert each > 0 and evaluation > 0
    assert abs(left - (14 * each + 7 * evaluation)) <= rounding + 21 * max(each, evaluation) * 0.005
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--lr LR learning rate (default: the preset's)" in help_text
    assert "(default: best, about 4 minutes on a 2-core CPU)" in help_text


# --- pictures from a phone ------------------------------------------------------------------

Image = pytest.importorskip("PIL.Image")


def _seven(size=(240, 200), paper=235, ink=20) -> np.ndarray:
    from PIL import ImageDraw

    picture = Image.new("L", size, paper)
    ImageDraw.Draw(picture).line([(60, 30), (180, 30), (110, 180)], fill=ink, width=18)
    return np.asarray(picture, dtype=np.float64)


def _same_digit(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel().astype(float), b.ravel().astype(float))[0, 1])


def test_exif_orientation_is_honoured(tmp_path):
    from mnist_xp.images import read_digits

    upright = Image.fromarray(_seven().astype(np.uint8))
    upright.save(tmp_path / "upright.jpg", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned a quarter left: show it turned a quarter right
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "phone.jpg", quality=95,
                                                      exif=exif)
    phone, _ = read_digits(tmp_path / "phone.jpg")
    straight, _ = read_digits(tmp_path / "upright.jpg")
    assert _same_digit(phone, straight) > 0.95


def test_uneven_light_is_not_ink():
    from mnist_xp.images import preprocess

    clean = preprocess(_seven())
    shadow = np.linspace(-150, 15, 240)[None, :]  # the left of the page in deep shadow
    shaded = preprocess(np.clip(_seven() + shadow * (_seven() > 100), 0, 255))
    assert _same_digit(shaded, clean) > 0.9


def test_a_digit_touching_the_border_keeps_its_colours():
    """A ring around the whole picture: the border is all ink, the paper is what most pixels
    show. Its middle must stay dark and the ring light, as MNIST draws a 0."""
    from mnist_xp.images import preprocess

    ring = np.full((40, 40), 230.0)
    ring[:4], ring[-4:], ring[:, :4], ring[:, -4:] = 25.0, 25.0, 25.0, 25.0
    digit = preprocess(ring)
    assert digit[14, 14] == 0 and digit[4:24, 4].max() == 255


def test_a_speck_is_no_digit():
    from mnist_xp.errors import DataError
    from mnist_xp.images import preprocess

    speck = np.full((120, 90), 240.0)
    speck[60, 45] = 10
    with pytest.raises(DataError, match="no digit found"):
        preprocess(speck)


def test_no_output_replaces_an_input(tiny_dir, tiny_data, tmp_path, capsys):
    """A resumed checkpoint, a model, a picture, a CSV: each command refuses, before any work,
    an output that would be written over one of its own inputs, and the input is unchanged."""
    from PIL import Image

    run, model = tmp_path / "run.npz", tmp_path / "model.npz"
    assert main(["train", *FAST, "--data-dir", str(tiny_dir), "--checkpoint", str(run),
                 "--save", str(model)]) == 0
    picture = tmp_path / "seven.png"
    Image.fromarray(tiny_data.test_images[0].reshape(28, 28)).save(picture)
    csv = kaggle_csv(tmp_path / "test.csv", tiny_data.test_images[:3], None)
    cases = [
        (["train", *FAST, "--data-dir", str(tiny_dir), "--steps", "9", "--resume", str(run),
          "--metrics-out", str(run)], run, f"--metrics-out {run} would replace --resume {run}"),
        (["predict", "--model", str(model), str(csv), "--submission", str(csv)], csv,
         f"--submission {csv} would replace the input {csv}"),
        (["predict", "--model", str(model), str(picture), "--show-preprocessed",
          str(tmp_path)], picture, f"seven.png would replace the input {picture}"),
        (["report", "--model", str(tmp_path / "weights.png"), "--out", str(tmp_path)], None,
         f"weights.png would replace --model {tmp_path / 'weights.png'}"),
    ]
    (tmp_path / "weights.png").write_bytes(model.read_bytes())
    capsys.readouterr()
    for argv, guarded, message in cases:
        before = guarded.read_bytes() if guarded else None
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "an output never replaces an input" in err
        assert err.count("\n") == 1
        if guarded:
            assert guarded.read_bytes() == before
    assert main(["train", *FAST, "--data-dir", str(tiny_dir), "--steps", "9", "--resume",
                 str(run), "--checkpoint", str(run)]) == 0  # kept up to date: allowed
    assert load_checkpoint(run).step == 9


def test_the_pace_is_refreshed_once_when_the_run_proves_it_far_off():
    """Pace against a clock: five steps of 10 ms said, then steps that take 100 ms: the first
    evaluation after five more steps says the pace again, once, from the run so far."""
    from mnist_xp.pace import Pace, evaluations_between

    assert evaluations_between(6, 20, 2) == 7 and evaluations_between(6, 21, 5) == 4
    assert evaluations_between(20, 20, 2) == 0
    pace = Pace(first=1, total=100, every=10)
    assert [s for s in range(1, 12) if pace.times_step(s)] == [2, 3, 4, 5, 6]
    said = None
    for step in range(2, 7):
        said = pace.timed(step, 0.010, 0.050, now=1.0)
    assert said is not None and said.steps_left == 94 and said.evaluations_left == 10
    assert said.seconds_left == pytest.approx(94 * 0.010 + 10 * 0.050)
    assert pace.check(10, now=1.0 + 4 * 0.010) is None  # too soon: 4 steps since
    refreshed = pace.check(20, now=1.0 + 14 * 0.100 + 2 * 0.050)  # 14 steps, 2 evaluations
    assert refreshed is not None and refreshed.refreshed
    assert refreshed.seconds_per_step == pytest.approx(0.100)
    assert refreshed.line().startswith("pace, refreshed: the run so far: 100 ms per step")
    assert pace.check(30, now=100.0) is None  # once only
    steady = Pace(first=1, total=100, every=10)
    for step in range(2, 7):
        steady.timed(step, 0.010, 0.050, now=1.0)
    assert steady.check(20, now=1.0 + 14 * 0.010 + 2 * 0.050) is None  # as said
    assert said._replace(steps_left=1, evaluations_left=1).line().endswith(
        "the 1 step and 1 evaluation left take about 0 s")


def test_guards_refuse_what_a_machine_cannot_do(tiny_dir, capsys, monkeypatch):
    """A chunk size that cuts a step into thousands of passes, and an --augment whose copies
    do not fit the memory left: each refused in one line before anything is built."""
    assert main(["train", *FAST, "--data-dir", str(tiny_dir), "--augment", "20",
                 "--chunk-size", "1"]) == 2
    assert ("--chunk-size 1 cuts each step's 4,800 rows into 4,800 chunks, each a pass of its "
            "own; at most 4,096: use --chunk-size 2 or more") in capsys.readouterr().err
    from mnist_xp.backends import Backend

    available = numpy_backend().memory_available()
    assert available is None or available > 64 << 20  # MemAvailable, read where Linux has it
    monkeypatch.setattr(Backend, "memory_available", lambda self: 1 << 20)
    assert main(["train", *FAST, "--data-dir", str(tiny_dir), "--augment", "3"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: this run needs about ") and err.count("\n") == 1
    assert "(3 copies of the training set), and cpu has 0.0 GiB left" in err
    assert "a cluster (--workers N or --scheduler ADDRESS), which spreads the copies" in err
