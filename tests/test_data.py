"""IDX and CSV readers, dataset loading, downloads (from file:// mirrors) and the real set."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mnist_xp import (
    DataError,
    datasets,
    load_dataset,
    read_idx_images,
    read_idx_labels,
    read_kaggle_csv,
)
from mnist_xp.data import parse_idx_images, parse_idx_labels
from mnist_xp.datasets import SPLIT_FILES, DatasetSpec
from mnist_xp.errors import DownloadError, UsageError

from conftest import traced_peak
from helpers import (
    idx_images_bytes,
    idx_labels_bytes,
    kaggle_csv,
    synthetic_dataset,
    write,
    write_dataset,
)

IMAGES = np.arange(3 * 784, dtype=np.int64).reshape(3, 784) % 256


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, gz):
    images = read_idx_images(write(tmp_path / "i", idx_images_bytes(IMAGES), gz))
    labels = read_idx_labels(write(tmp_path / "l", idx_labels_bytes([7, 0, 9]), gz))
    np.testing.assert_array_equal(images, IMAGES)
    np.testing.assert_array_equal(labels, [7, 0, 9])
    assert images.dtype == labels.dtype == np.uint8 and images.flags.writeable


@pytest.mark.parametrize("payload,reader,message", [
    (idx_images_bytes(IMAGES, magic=2049), read_idx_images, "wrong magic number 2049"),
    (idx_labels_bytes([1, 2], magic=2051), read_idx_labels, "wrong magic number 2051"),
    (idx_images_bytes(IMAGES[:, :783], rows=27, cols=29), read_idx_images, "27x29"),
    (idx_images_bytes(IMAGES)[:-1], read_idx_images, "truncated"),
    (idx_images_bytes(IMAGES) + b"\0", read_idx_images, "trailing bytes"),
    (idx_labels_bytes([1, 2, 3])[:-1], read_idx_labels, "truncated"),
    (idx_labels_bytes([1, 10, 3]), read_idx_labels, "label 10 at index 1"),
    (b"\0\0\x08", read_idx_labels, "too short"),
])
def test_bad_idx_is_a_data_error(tmp_path, payload, reader, message):
    path = write(tmp_path / "bad.gz", payload)
    with pytest.raises(DataError, match=message) as info:
        reader(path)
    assert str(path) in str(info.value)


def test_truncated_gzip(tmp_path):
    full = gzip.compress(idx_images_bytes(IMAGES))
    path = tmp_path / "cut.gz"
    path.write_bytes(full[: len(full) // 2])
    with pytest.raises(DataError, match="truncated or corrupt gzip"):
        read_idx_images(path)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_idx_images(tmp_path / "nope.gz")


def test_load_dataset_from_data_dir(tiny_dir, tiny_data):
    data = load_dataset(data_dir=tiny_dir)
    for got, want in zip(data[:4], tiny_data[:4]):
        np.testing.assert_array_equal(got, want)


def test_load_dataset_raw_files(tmp_path, tiny_data):
    write_dataset(tmp_path, tiny_data, gz=False)
    assert load_dataset(data_dir=tmp_path).train_images.shape == tiny_data.train_images.shape


def test_count_mismatch(tiny_dir, tiny_data):
    write(tiny_dir / "t10k-labels-idx1-ubyte.gz", idx_labels_bytes(tiny_data.test_labels[:-1]))
    with pytest.raises(DataError, match="120 images but 119 labels"):
        load_dataset(data_dir=tiny_dir)


def test_missing_file_in_data_dir(tiny_dir):
    (tiny_dir / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="missing train-labels-idx1-ubyte"):
        load_dataset(data_dir=tiny_dir)


def test_unknown_dataset_and_dir(tmp_path):
    with pytest.raises(UsageError, match="unknown dataset"):
        load_dataset("cifar")
    with pytest.raises(UsageError, match="no such directory"):
        load_dataset(data_dir=tmp_path / "absent")


def test_kaggle_csv(tmp_path):
    labels = np.array([3, 1, 4])
    images, got = read_kaggle_csv(kaggle_csv(tmp_path / "train.csv", IMAGES, labels))
    np.testing.assert_array_equal(images, IMAGES)
    np.testing.assert_array_equal(got, labels)
    images, got = read_kaggle_csv(kaggle_csv(tmp_path / "test.csv", IMAGES, None))
    assert got is None and images.shape == (3, 784)


def test_kaggle_csv_short_row(tmp_path):
    path = kaggle_csv(tmp_path / "train.csv", IMAGES, np.array([3, 1, 4]))
    lines = path.read_text().splitlines()
    lines[2] = lines[2].rsplit(",", 1)[0]  # 783 pixels
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="train.csv"):
        read_kaggle_csv(path)


@pytest.mark.parametrize("edit,message", [
    (lambda text: text.replace("label,", "digit,", 1), "header"),
    (lambda text: text.replace("\n3,", "\n10,", 1), "label 10"),
    (lambda text: text.replace("\n3,0,", "\n3,256,", 1), "0-255"),
    (lambda text: text.split("\n")[0] + "\n", "no data rows"),
])
def test_kaggle_csv_bad(tmp_path, edit, message):
    path = kaggle_csv(tmp_path / "train.csv", IMAGES, np.array([3, 1, 4]))
    path.write_text(edit(path.read_text()))
    with pytest.raises(DataError, match=message):
        read_kaggle_csv(path)


@pytest.mark.parametrize("line,text,kind", [
    (3, "", "a blank line"), (2, "# made by hand", "a comment line"), (4, "   ", "a blank line"),
    (3, "#3,0,0", "a comment line")])
def test_kaggle_csv_lines_a_reader_would_skip_are_refused(tmp_path, line, text, kind):
    """A skipped line would shift every later ImageId of a submission: refused, by number
    (the header is line 1). A final newline is no blank line."""
    path = kaggle_csv(tmp_path / "test.csv", IMAGES, None)
    lines = path.read_text().split("\n")
    lines.insert(line - 1, text)
    path.write_text("\n".join(lines))
    with pytest.raises(DataError, match=f"line {line} is {kind}"):
        read_kaggle_csv(path)
    assert read_kaggle_csv(kaggle_csv(tmp_path / "ok.csv", IMAGES, None))[0].shape == (3, 784)


# --- downloads, from file:// mirrors -------------------------------------------------------

@pytest.fixture
def mirrors(tmp_path, monkeypatch):
    """A dataset 'tiny' served by two file:// mirrors; the cache is $MNIST_XP_DATA_DIR/tiny."""
    data = synthetic_dataset(n_train=30, n_test=20)
    good, bad = tmp_path / "good", tmp_path / "bad"
    payloads = write_dataset(good, data)
    bad.mkdir()
    for stem, payload in payloads.items():  # same names, one flipped byte each
        flipped = bytearray(payload)
        flipped[-1] ^= 0xFF
        write(bad / f"{stem}.gz", bytes(flipped))
    md5s = {stem: hashlib.md5(p).hexdigest() for stem, p in payloads.items()}
    spec = DatasetSpec("tiny", (bad.as_uri() + "/", good.as_uri() + "/"), md5s)
    monkeypatch.setitem(datasets.DATASETS, "tiny", spec)
    monkeypatch.setenv("MNIST_XP_DATA_DIR", str(tmp_path / "cache"))
    return data, tmp_path / "cache" / "tiny", spec


def test_download_skips_a_mirror_with_a_bad_checksum(mirrors):
    data, cache, _ = mirrors
    loaded = load_dataset("tiny")
    np.testing.assert_array_equal(loaded.train_images, data.train_images)
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{s}.gz" for s in SPLIT_FILES)


def test_cached_files_are_verified_and_refetched(mirrors):
    data, cache, _ = mirrors
    load_dataset("tiny")
    path = cache / "train-labels-idx1-ubyte.gz"
    payload = bytearray(gzip.decompress(path.read_bytes()))
    payload[-1] = (payload[-1] + 1) % 10  # still a valid IDX file, but not the published one
    path.write_bytes(gzip.compress(bytes(payload)))
    with pytest.warns(UserWarning, match="fails its MD5 check; downloading it again"):
        loaded = load_dataset("tiny")
    np.testing.assert_array_equal(loaded.train_labels, data.train_labels)


def test_total_download_failure_lists_every_url(mirrors, monkeypatch):
    _, cache, spec = mirrors
    dead = (spec.mirrors[0], spec.mirrors[0].replace("bad", "nowhere"))
    monkeypatch.setitem(datasets.DATASETS, "tiny", DatasetSpec("tiny", dead, spec.payload_md5))
    with pytest.raises(DownloadError) as info:
        load_dataset("tiny")
    message = str(info.value)
    for mirror in dead:
        assert mirror + "train-images-idx3-ubyte.gz" in message
    assert "MD5" in message and "by hand" in message and str(cache) in message
    assert not any(cache.iterdir()), "a failed download must leave nothing behind"


def test_corrupt_cache_without_a_mirror_is_refused(mirrors, monkeypatch):
    _, cache, spec = mirrors
    load_dataset("tiny")
    path = cache / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-8])
    monkeypatch.setitem(datasets.DATASETS, "tiny", DatasetSpec("tiny", (), spec.payload_md5))
    with warnings.catch_warnings(), pytest.raises(DataError, match="corrupted"):
        warnings.simplefilter("ignore")
        load_dataset("tiny")


def test_cache_dir_layout(monkeypatch, tmp_path):
    monkeypatch.setenv("MNIST_XP_DATA_DIR", str(tmp_path))
    assert datasets.cache_dir("mnist") == tmp_path
    assert datasets.cache_dir("fashion-mnist") == tmp_path / "fashion-mnist"
    monkeypatch.delenv("MNIST_XP_DATA_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert datasets.cache_dir("mnist") == tmp_path / "xdg" / "mnist-xp" / "mnist"


# --- the real MNIST files ------------------------------------------------------------------

@pytest.mark.real_data
def test_real_mnist_is_verified_and_shaped(real_data_dir):
    data = load_dataset()  # $MNIST_XP_DATA_DIR: MD5-verified, no network when files are good
    assert data.train_images.shape == (60000, 784) and data.test_images.shape == (10000, 784)
    assert data.train_labels.shape == (60000,) and data.test_labels.shape == (10000,)
    assert np.bincount(data.test_labels).tolist()[:3] == [980, 1135, 1032]


def test_real_files_read_from_data_dir_without_a_network(real_data_dir, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("--data-dir must not download")

    monkeypatch.setattr("urllib.request.urlopen", no_network)
    assert load_dataset(data_dir=real_data_dir).test_labels[:5].tolist() == [7, 2, 1, 0, 4]


def test_fashion_checksums_are_not_mnist():
    assert set(datasets.DATASETS["fashion-mnist"].payload_md5.values()).isdisjoint(
        datasets.DATASETS["mnist"].payload_md5.values())


def test_fashion_mnist_from_debian_package_if_present():
    folder = Path("/usr/share/datasets/fashion-mnist")
    if not folder.is_dir():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    spec = datasets.DATASETS["fashion-mnist"]
    for stem, expected in spec.payload_md5.items():
        payload = gzip.decompress((folder / f"{stem}.gz").read_bytes())
        assert hashlib.md5(payload).hexdigest() == expected


# --- random bytes never raise anything but DataError ---------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000), st.sampled_from([parse_idx_images, parse_idx_labels]))
def test_random_bytes_give_data_errors_only(payload, parse):
    try:
        result = parse(payload, "fuzz")
    except DataError:
        return
    assert result.dtype == np.uint8


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 40))
def test_mutated_headers_are_refused_before_reading(count, rows, cut):
    """A header may claim any count or size: the payload length decides, nothing is allocated
    from the claim."""
    payload = idx_images_bytes(IMAGES)
    header = payload[:4] + count.to_bytes(4, "big") + rows.to_bytes(4, "big") + payload[12:16]
    mutated = header + payload[16:len(payload) - cut]
    try:
        images = parse_idx_images(mutated, "fuzz")
    except DataError:
        return
    assert images.shape == (count, 784) and cut == 0


def test_unwritable_cache_is_a_clear_download_error(tmp_path, monkeypatch):
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("")
    monkeypatch.setenv("MNIST_XP_DATA_DIR", str(blocked / "mnist"))
    with pytest.raises(DownloadError, match="cannot download train-images-idx3-ubyte.gz into"):
        load_dataset("mnist")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000))
def test_random_bytes_through_gzip_give_data_errors_only(raw):
    from mnist_xp.data import decompress

    for payload in (raw, gzip.compress(raw)[: max(1, len(raw))]):
        with contextlib.suppress(DataError):
            parse_idx_images(decompress(payload, "fuzz"), "fuzz")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000) | st.text(max_size=3000).map(str.encode))
def test_random_csv_bytes_give_data_errors_only(tmp_path_factory, raw):
    from mnist_xp.data import read_kaggle_csv

    path = tmp_path_factory.mktemp("csv") / "fuzz.csv"
    for payload in (raw, b"label," + b",".join(b"pixel%d" % i for i in range(784)) + b"\n" + raw):
        path.write_bytes(payload)
        try:
            images, labels = read_kaggle_csv(path)
        except DataError:
            continue
        assert images.dtype == np.uint8 and images.shape[1:] == (784,)


def test_a_billion_image_header_is_refused_before_any_allocation():
    payload = idx_images_bytes(IMAGES)
    claim = payload[:4] + (10**9).to_bytes(4, "big") + payload[8:]
    with traced_peak() as peak, pytest.raises(DataError, match="fuzz"):
        parse_idx_images(claim, "fuzz")
    assert peak[0] < 1_000_000  # 10^9 images would be 784 GB


def _gzip_bomb(path, header: bytes, zeros: int) -> None:
    """A gzip file of `header` and then `zeros` zero bytes, written in pieces (a few MB on
    disk for hundreds of MB inflated)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    with open(path, "wb") as handle:
        handle.write(packer.compress(header))
        block = bytes(1 << 20)
        for _ in range(zeros >> 20):
            handle.write(packer.compress(block))
        handle.write(packer.flush())


@pytest.mark.parametrize("count,message,bound", [
    # promises 1.6 MB, holds 300 MB: read up to the promise
    (2_000, "trailing bytes", 2_000 * 784 + (4 << 20)),
    # no file this small can keep such a promise: nothing read past the header
    (10**7, "promises 7,840,000,000 bytes of data, more than", 1 << 20),
])
def test_a_gzip_bomb_is_refused_without_inflating_it(tmp_path, count, message, bound):
    """An IDX .gz whose payload inflates far beyond its header's promise, or whose promise no
    file of its size could keep: one line, and the memory stays near what the promise needs
    (the whole 300 MB used to be inflated before the length was checked)."""
    path = tmp_path / "train-images-idx3-ubyte.gz"
    _gzip_bomb(path, idx_images_bytes(IMAGES[:0])[:4] + count.to_bytes(4, "big")
               + (28).to_bytes(4, "big") * 2, 300 << 20)
    assert path.stat().st_size < 1_000_000
    with traced_peak() as peak, pytest.raises(DataError, match=message):
        read_idx_images(path)
    assert peak[0] < bound, peak[0]


def test_a_download_cut_halfway_leaves_nothing_behind(mirrors, monkeypatch):
    """The connection drops (or Ctrl-C arrives) mid-transfer: no file, no temp file."""
    _, cache, _ = mirrors
    import urllib.request

    real_urlopen = urllib.request.urlopen

    class HalfThenFail:
        def __init__(self, url, timeout=None):
            self.inner = real_urlopen(url, timeout=timeout)
            self.headers = self.inner.headers
            self.sent = 0

        def read(self, size=-1):
            if self.sent:
                raise KeyboardInterrupt
            self.sent += 1
            return self.inner.read(64)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.inner.close()

    monkeypatch.setattr(urllib.request, "urlopen", HalfThenFail)
    with pytest.raises(KeyboardInterrupt):
        load_dataset("tiny")
    assert not cache.exists() or not any(cache.iterdir())


@pytest.mark.parametrize("stem", SPLIT_FILES)
def test_one_flipped_byte_in_the_cache_is_detected_and_refetched(mirrors, stem):
    data, cache, _ = mirrors
    load_dataset("tiny")
    path = cache / f"{stem}.gz"
    damaged = bytearray(path.read_bytes())
    damaged[len(damaged) // 2] ^= 0x01
    path.write_bytes(bytes(damaged))
    with pytest.warns(UserWarning, match=f"{stem}.gz.*downloading it again"):
        loaded = load_dataset("tiny")
    np.testing.assert_array_equal(loaded.test_images, data.test_images)
    np.testing.assert_array_equal(loaded.train_labels, data.train_labels)


def test_docs_name_mnists_mirrors_in_the_order_they_are_tried():
    from pathlib import Path

    from mnist_xp.datasets import DATASETS

    text = (Path(__file__).resolve().parents[1] / "docs" / "command-line.md").read_text()
    said = " ".join(text.split())
    first, second = DATASETS["mnist"].mirrors
    assert f"(MNIST: `{first}`, then `{second}`)" in said
