"""Hostile files, as people download and pass them around: model files and checkpoints whose
members inflate far beyond their size, that carry members nobody asked for, or whose bytes are
flipped at random. Each is refused in one line (exit 1 from the command line), reads no more
memory than the file's own config needs, and runs nothing it names."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mnist_xp import Config, train
from mnist_xp.backends import numpy_backend
from mnist_xp.cli import main
from mnist_xp.errors import DataError
from mnist_xp.modelfile import read_model_file

from conftest import traced_peak

BOMB = 256 << 20  # inflated bytes of each bomb: a few hundred KB on disk


@pytest.fixture(scope="module")
def good_model(tmp_path_factory, tiny_data):
    path = tmp_path_factory.mktemp("good") / "model.npz"
    model, _ = train(tiny_data, numpy_backend(), Config(hidden=(16,), steps=2))
    model.save(path)
    return path


def _with_member(source, target, name, header: bytes, zeros: int) -> None:
    """source's members, then `name` (deflated): `header` and `zeros` zero bytes, streamed."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            if info.filename != name:
                new.writestr(info, old.read(info))
        info = zipfile.ZipInfo(name)
        info.compress_type = zipfile.ZIP_DEFLATED
        with new.open(info, "w", force_zip64=True) as member:
            member.write(header)
            block = bytes(1 << 20)
            for _ in range(zeros >> 20):
                member.write(block)


def _npy_header(shape, dtype="<f4") -> bytes:
    """An .npy file's magic and header (version 1.0), its data left to follow."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


@pytest.mark.parametrize("name,header,message", [
    ("bomb.npy", b"", "unknown member 'bomb'"),
    ("param0.npy", None, "would inflate from"),
])
def test_a_model_file_bomb_is_refused_with_bounded_memory(good_model, tmp_path, capsys, name,
                                                          header, message):
    """A member nobody asked for, or a parameter whose data inflates 1000-fold: refused before
    it is inflated (a 2.1 MB file of this kind used to take 2.16 GB)."""
    path = tmp_path / "bomb.npz"
    if header is None:
        header = _npy_header((784, 16))
    _with_member(good_model, path, name, header, BOMB)
    assert path.stat().st_size < 2_000_000
    with traced_peak() as peak, pytest.raises(DataError, match=message):
        read_model_file(path)
    assert peak[0] < 4 << 20, peak[0]
    capsys.readouterr()
    assert main(["evaluate", "--model", str(path), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}:") and err.count("\n") == 1


def test_metadata_may_not_run_anything(good_model, tmp_path):
    """A pickled metadata object, as np.save would write for a dict: refused unread."""
    path = tmp_path / "pickled.npz"
    with zipfile.ZipFile(good_model) as old:
        arrays = {i.filename[:-4]: np.load(io.BytesIO(old.read(i))) for i in old.infolist()
                  if i.filename != "meta.npy"}
    np.savez(path, meta=np.array([{"format_version": 1}], dtype=object), **arrays)
    with pytest.raises(DataError, match="its metadata is pickled"):
        read_model_file(path)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 10**9), st.integers(0, 255)), min_size=1, max_size=8))
def test_flipped_bytes_give_one_data_error(good_model, tmp_path, flips):
    """Any byte of a good model file changed: the file still loads to the same shapes (the
    byte was in a weight) or is refused as a DataError, never another exception."""
    data = bytearray(good_model.read_bytes())
    for where, value in flips:
        data[where % len(data)] = value
    path = tmp_path / "flipped.npz"
    path.write_bytes(bytes(data))
    try:
        saved = read_model_file(path)
    except DataError as exc:
        assert "\n" not in str(exc)
        return
    assert [p.shape for p in saved.params] == [(784, 16), (16,), (16, 10), (10,)]
    assert all(np.isfinite(p).all() for p in saved.params)


def test_meta_that_is_too_large_is_refused_unread(good_model, tmp_path):
    path = tmp_path / "big-meta.npz"
    text = json.dumps({"format_version": 1, "padding": "x" * (17 << 20)})
    with zipfile.ZipFile(good_model) as old, zipfile.ZipFile(path, "w") as new:
        for info in old.infolist():
            if info.filename != "meta.npy":
                new.writestr(info, old.read(info))
        buffer = io.BytesIO()
        np.save(buffer, np.array(text))
        new.writestr("meta.npy", buffer.getvalue())
    with traced_peak() as peak, pytest.raises(DataError, match="declares .* more than its"):
        read_model_file(path)
    assert peak[0] < 4 << 20


def test_json_output_never_holds_nan():
    """A rate of a run that took no measurable time (infinity), a loss never read (NaN): null
    in the JSON, which any reader accepts; json.dumps would write bare Infinity and NaN."""
    from mnist_xp.files import json_text

    text = json_text({"steps_per_second": float("inf"), "history": [{"loss": float("nan")}],
                      "ok": 1.5, "pair": (float("-inf"), 2)})
    assert json.loads(text) == {"steps_per_second": None, "history": [{"loss": None}],
                                "ok": 1.5, "pair": [None, 2]}
    assert "NaN" not in text and "Infinity" not in text


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=2000), st.sampled_from([".png", ".jpg", ".gif", ".bmp", ".webp"]),
       st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"BM",
                        b"%!PS-Adobe-3.0 EPSF-3.0\n"]))
def test_random_picture_bytes_give_one_data_error(tmp_path, raw, suffix, magic):
    """Any bytes under a picture's name (behind a real format's magic, or PostScript's): a
    digit or one DataError, never another exception."""
    pytest.importorskip("PIL")
    from mnist_xp.images import read_digits

    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(magic + raw)
    try:
        digits, _ = read_digits(path)
    except DataError as exc:
        assert "\n" not in str(exc)
        return
    assert digits.shape == (1, 784)
