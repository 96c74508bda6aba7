"""predict: MNIST-style preprocessing of your own pictures, .npy and Kaggle CSV inputs, JSON
and submission output; report: the pictures and report.md."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mnist_xp import train
from mnist_xp.backends import numpy_backend
from mnist_xp.cli import main
from mnist_xp.datasets import load_dataset
from mnist_xp.images import preprocess

from helpers import kaggle_csv

Image = pytest.importorskip("PIL.Image")
ImageDraw = pytest.importorskip("PIL.ImageDraw")


def drawing(digit: str, size=(360, 260), box=(150, 20, 330, 250), width=28) -> np.ndarray:
    """A thick dark-on-light '1' or '7', off-centre (right) and oversized."""
    picture = Image.new("L", size, 235)
    pen = ImageDraw.Draw(picture)
    left, top, right, bottom = box
    middle = (left + right) // 2
    if digit == "1":
        pen.line([(middle - 30, top + 35), (middle, top), (middle, bottom)], fill=20, width=width)
    else:
        pen.line([(left, top), (right, top), (middle - 10, bottom)], fill=20, width=width)
    return np.asarray(picture)


def ink_box(image: np.ndarray) -> tuple[int, int]:
    rows, cols = np.flatnonzero((image > 64).any(1)), np.flatnonzero((image > 64).any(0))
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


@pytest.mark.parametrize("digit", ["1", "7"])
def test_drawings_become_mnist_style_digits(digit):
    image = preprocess(drawing(digit)).astype(np.float64)
    assert image.shape == (28, 28)
    assert image.max() == 255 and image[0].max() == image[-1].max() == 0  # light ink, dark paper
    height, width = ink_box(image)
    assert max(height, width) <= 21 and max(height, width) >= 18  # fitted to the 20x20 box
    ys, xs = np.indices(image.shape)
    centre = ((ys * image).sum() / image.sum(), (xs * image).sum() / image.sum())
    assert np.allclose(centre, 13.5, atol=0.75)  # centre of mass at the centre


def test_jpeg_and_png_read_the_same_digit(tmp_path):
    from mnist_xp.images import read_digits

    picture = Image.fromarray(drawing("7")).convert("RGB")
    picture.save(tmp_path / "seven.jpg", quality=90)
    picture.save(tmp_path / "seven.png")
    jpeg, _ = read_digits(tmp_path / "seven.jpg")
    png, names = read_digits(tmp_path / "seven.png")
    assert jpeg.shape == png.shape == (1, 784) and names == [str(tmp_path / "seven.png")]
    assert np.abs(jpeg.astype(int) - png.astype(int)).mean() < 8  # JPEG noise, same digit


def test_blank_and_unreadable_pictures_are_one_line_errors(tmp_path, capsys, tiny_dir):
    model = tmp_path / "m.npz"
    train_and_save(tiny_dir, model)
    Image.new("L", (50, 50), 255).save(tmp_path / "blank.png")
    (tmp_path / "fake.png").write_bytes(b"not a png")
    for name, message in [("blank.png", "no digit found"), ("fake.png", "not a readable image"),
                          ("missing.png", "file not found")]:
        assert main(["predict", "--model", str(model), str(tmp_path / name)]) == 1
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and name in err


def _png_header_only(path, width, height):
    """A PNG that declares width x height and holds no pixels: enough for a reader that
    decodes before it checks the size to try."""
    import struct
    import zlib

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(
        ">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + chunk(b"IEND", b""))


def test_pictures_that_attack_are_one_line_each_and_the_others_are_predicted(
        tmp_path, capsys, tiny_dir, monkeypatch):
    """A PostScript file named .png (Pillow would start Ghostscript for it: a stub on PATH
    records whether anything ran), a picture of 150 million pixels, and an input whose reading
    fails in an unforeseen way: one line each, exit 1, and the good picture is still
    predicted."""
    model = tmp_path / "m.npz"
    train_and_save(tiny_dir, model)
    stubs = tmp_path / "bin"
    stubs.mkdir()
    ran = tmp_path / "ghostscript-ran"
    (stubs / "gs").write_text(f"#!/bin/sh\ntouch {ran}\nexit 1\n")
    (stubs / "gs").chmod(0o755)
    monkeypatch.setenv("PATH", f"{stubs}:{__import__('os').environ['PATH']}")
    (tmp_path / "digit.png").write_text("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 28 28\n"
                                        "showpage\n")
    _png_header_only(tmp_path / "huge.png", 15000, 10000)
    Image.fromarray(drawing("7")).save(tmp_path / "seven.png")
    Image.fromarray(drawing("1")).save(tmp_path / "odd.png")
    import mnist_xp.images as images

    real = images.preprocess

    def failing(gray, name="image"):
        if name.endswith("odd.png"):
            raise ZeroDivisionError("an unforeseen failure")
        return real(gray, name)

    monkeypatch.setattr(images, "preprocess", failing)
    inputs = [tmp_path / name for name in ("digit.png", "huge.png", "odd.png", "seven.png")]
    capsys.readouterr()
    assert main(["predict", "--model", str(model), *map(str, inputs)]) == 1
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("error: ") for line in lines)
    assert "digit.png: not a readable image (only PNG, JPEG" in lines[0]
    assert "150 million pixels, more than the 64 million" in lines[1]
    assert "odd.png: cannot be read (ZeroDivisionError: an unforeseen failure)" in lines[2]
    assert out.startswith(f"{inputs[3]}: ") and not ran.exists()


def test_a_16_bit_picture_is_scaled_not_clipped(tmp_path):
    """Dark ink (3000 of 65535) on light paper (60000): clipped to 8 bits, both would be white
    and no digit found."""
    from mnist_xp.images import read_digits

    picture = np.full((280, 280), 60000, np.uint16)
    picture[50:230, 130:150] = 3000
    Image.fromarray(picture).save(tmp_path / "deep.png")
    digits, _ = read_digits(tmp_path / "deep.png")
    assert digits.shape == (1, 784) and (digits > 128).sum() >= 20


def test_a_phone_sized_photo_is_reduced_while_it_is_decoded(tmp_path):
    """A 24-megapixel JPEG: decoded at a fraction of its size (draft mode), so the float work
    is on a small picture (it used to take 0.8 GB as float64 at full resolution)."""
    from mnist_xp.images import read_digits

    from conftest import traced_peak

    photo = np.full((4000, 6000), 220, np.uint8)
    photo[1500:2500, 2900:3100] = 30
    Image.fromarray(photo).save(tmp_path / "photo.jpg", quality=90)
    with traced_peak() as peak:
        digits, _ = read_digits(tmp_path / "photo.jpg")
    assert (digits > 128).sum() >= 20
    assert peak[0] < 100 << 20, peak[0]


def train_and_save(data_dir, path, *flags):
    assert main(["train", "--preset", "relu10", "--steps", "30", "--lr", "0.05", "--device",
                 "cpu", "--data-dir", str(data_dir), "--quiet", "--save", str(path),
                 *flags]) == 0


def test_npy_json_and_preprocessed_pictures(tmp_path, capsys, tiny_dir, tiny_data):
    model = tmp_path / "m.npz"
    train_and_save(tiny_dir, model)
    digits = tiny_data.test_images[:5].reshape(5, 28, 28)
    np.save(tmp_path / "digits.npy", digits)
    Image.fromarray(255 - np.kron(digits[0], np.ones((3, 3), np.uint8))).save(tmp_path / "a.png")
    capsys.readouterr()
    shown = tmp_path / "shown"
    assert main(["predict", "--model", str(model), "--json", "--show-preprocessed", str(shown),
                 str(tmp_path / "digits.npy"), str(tmp_path / "a.png")]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["input"] for r in results][:2] == [f"{tmp_path}/digits.npy[0]",
                                                 f"{tmp_path}/digits.npy[1]"]
    from mnist_xp import MLP

    expected = MLP.load(model, numpy_backend()).predict(digits.reshape(5, 784))
    assert [r["digit"] for r in results[:5]] == expected.tolist()
    for r in results:
        probabilities = [t["probability"] for t in r["top3"]]
        assert r["digit"] == r["top3"][0]["digit"] and probabilities == sorted(probabilities,
                                                                                reverse=True)
    assert sorted(p.name for p in shown.iterdir()) == ["a.png"] + [f"digits-{i}.png"
                                                                   for i in range(5)]
    assert Image.open(shown / "a.png").size == (28, 28)


def test_kaggle_csv_gives_a_submission(tmp_path, capsys, tiny_dir, tiny_data):
    model = tmp_path / "m.npz"
    train_and_save(tiny_dir, model)
    test_csv = kaggle_csv(tmp_path / "test.csv", tiny_data.test_images[:7], None)
    capsys.readouterr()
    assert main(["predict", "--model", str(model), str(test_csv)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "ImageId,Label" and len(lines) == 8
    assert [line.split(",")[0] for line in lines[1:]] == [str(i) for i in range(1, 8)]
    out = tmp_path / "submission.csv"
    assert main(["predict", "--model", str(model), str(test_csv), "--submission", str(out)]) == 0
    assert out.read_text().splitlines() == lines


def test_report_writes_pictures_and_precision_recall(tmp_path, capsys, tiny_dir):
    pytest.importorskip("matplotlib")
    model = tmp_path / "m.npz"
    train_and_save(tiny_dir, model, "--eval-every", "10")
    out = tmp_path / "report"
    assert main(["report", "--model", str(model), "--out", str(out), "--data-dir",
                 str(tiny_dir), "--device", "cpu"]) == 0
    names = ["confusion-matrix.png", "training-curves.png", "mistakes.png", "weights.png"]
    for name in names:
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
        assert f"]({name})" in (out / "report.md").read_text()
    text = (out / "report.md").read_text()
    assert "| digit | test images | precision | recall |" in text
    assert text.count("\n| ") >= 11


def test_report_without_matplotlib_names_the_extra(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["report", "--model", str(tmp_path / "m.npz"), "--out", str(tmp_path)]) == 2
    assert 'pip install "mnist-xp[plot]"' in capsys.readouterr().err


def test_mnist_test_digits_drawn_as_pictures_and_drawn_digits(real_data_dir, tmp_path):
    data = load_dataset("mnist", real_data_dir)
    model, _ = train(data, numpy_backend(), "sigmoid128", epochs=2)
    digits = data.test_images[:60]
    pictures = []
    for digit in digits:  # dark on light, 4x larger, off-centre on a canvas
        canvas = np.full((180, 220), 255, np.uint8)
        canvas[30:142, 90:202] = 255 - np.kron(digit.reshape(28, 28), np.ones((4, 4), np.uint8))
        pictures.append(preprocess(canvas).reshape(784))
    from_pictures = model.predict(np.stack(pictures))
    direct = model.predict(digits)
    assert np.mean(from_pictures == direct) >= 0.9
    assert np.mean(from_pictures == data.test_labels[:60]) >= 0.85
    drawn = np.stack([preprocess(drawing(d)).reshape(784) for d in "17"])
    assert model.predict(drawn).tolist() == [1, 7]
