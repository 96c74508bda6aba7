"""The datasets mnist_xp knows, where their files live, and load_dataset().

Files are looked up in `--data-dir` (read as they are, no network), else in the cache:
$MNIST_XP_DATA_DIR (MNIST directly inside it, other datasets in a subfolder named after them),
else ~/.cache/mnist-xp/<dataset> (honouring XDG_CACHE_HOME). Cached files are verified by the
MD5 of their decompressed payload before use; a missing or corrupted one is (re-)downloaded.
"""

from __future__ import annotations

import gzip
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import download
from .data import (
    IMAGE_MAGIC,
    LABEL_MAGIC,
    PIXELS,
    Dataset,
    check_split,
    parse_idx_images,
    parse_idx_labels,
    read_payload,
)
from .errors import DataError, DownloadError, UsageError

SPLIT_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset in the four-file IDX layout: its mirrors and the payload MD5 of each file."""

    name: str
    mirrors: tuple[str, ...]
    payload_md5: dict[str, str]  # file name without .gz -> MD5 of the decompressed bytes
    train_rows: int = 60_000
    classes: tuple[str, ...] | None = None  # names of labels 0..9 where they are not digits


DATASETS = {
    "mnist": DatasetSpec(
        "mnist",
        ("https://ossci-datasets.s3.amazonaws.com/mnist/",
         "https://storage.googleapis.com/cvdf-datasets/mnist/"),
        dict(zip(SPLIT_FILES, ("6bbc9ace898e44ae57da46a324031adb",
                               "a25bea736e30d166cdddb491f175f624",
                               "2646ac647ad5339dbf082846283269ea",
                               "27ae3e4e09519cfbb04c329615203637"))),
    ),
    "fashion-mnist": DatasetSpec(
        "fashion-mnist",
        ("https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
         "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"),
        dict(zip(SPLIT_FILES, ("f4a8712d7a061bf5bd6d2ca38dc4d50a",
                               "9018921c3c673c538a1fc5bad174d6f9",
                               "8181f5470baa50b63fa0f6fddb340f0a",
                               "15d484375f8d13e6eb1aabb0c3f46965"))),
        classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                 "Sneaker", "Bag", "Ankle boot"),
    ),
}


def cache_dir(name: str) -> Path:
    """Where `name` is cached: $MNIST_XP_DATA_DIR, else the user cache."""
    env = os.environ.get("MNIST_XP_DATA_DIR")
    if env:
        return Path(env) if name == "mnist" else Path(env) / name
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mnist-xp" / name


def magic_of(stem: str) -> int:
    """The IDX magic number a dataset file must start with."""
    return IMAGE_MAGIC if "images" in stem else LABEL_MAGIC


def _on_disk(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def _verified_payload(spec: DatasetSpec, folder: Path, stem: str, progress: bool) -> bytes:
    """The cached payload if its MD5 matches; otherwise fetch it again."""
    expected = spec.payload_md5[stem]
    path = _on_disk(folder, stem)
    if path is not None:
        try:
            payload = read_payload(path, magic_of(stem))
            problem = None if download.md5(payload) == expected else "fails its MD5 check"
        except DataError as exc:
            problem = str(exc)
        if problem is None:
            return payload
        warnings.warn(f"{path}: cached file {problem}; downloading it again", stacklevel=3)
    try:
        return download.fetch(f"{stem}.gz", list(spec.mirrors), folder, expected, progress,
                              magic_of(stem))
    except DownloadError:
        if path is not None:
            raise DataError(f"{path} is corrupted and could not be downloaded again: "
                            f"replace it by hand (payload MD5 {expected})") from None
        raise


def _folder(name: str, data_dir: str | Path | None) -> tuple[DatasetSpec, Path]:
    spec = DATASETS.get(name)
    if spec is None:
        raise UsageError(f"unknown dataset {name!r}: choose from {', '.join(DATASETS)}")
    if data_dir is None:
        return spec, cache_dir(name)
    folder = Path(data_dir)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--data-dir {folder}: is a file; give the folder that holds the "
                         f"four IDX files")
    if not folder.is_dir():
        raise UsageError(f"--data-dir {folder}: no such directory")
    return spec, folder


def load_dataset(name: str = "mnist", data_dir: str | Path | None = None, *,
                 progress: bool = False, test_only: bool = False) -> Dataset:
    """Load train and test splits as uint8 arrays, from `data_dir` or the verified cache.
    With test_only the training files are not read (nor downloaded): the train split is
    empty."""
    spec, folder = _folder(name, data_dir)
    parsers = (parse_idx_images, parse_idx_labels, parse_idx_images, parse_idx_labels)
    arrays = []
    for index, (stem, parse) in enumerate(zip(SPLIT_FILES, parsers)):
        if test_only and index < 2:
            arrays.append(np.zeros((0, PIXELS) if index == 0 else 0, np.uint8))
            continue
        if data_dir is None:
            payload, source = _verified_payload(spec, folder, stem, progress), folder / stem
        else:
            source = _on_disk(folder, stem)
            if source is None:
                raise DataError(f"{folder}: missing {stem}.gz (or {stem})")
            payload = read_payload(source, magic_of(stem))
        arrays.append(parse(payload, str(source)))
    train_images, train_labels, test_images, test_labels = arrays
    if not test_only:
        check_split(train_images, train_labels, f"{folder} (train split)")
    check_split(test_images, test_labels, f"{folder} (test split)")
    return Dataset(train_images, train_labels, test_images, test_labels, name,
                   str(folder.resolve()))


def train_rows(name: str = "mnist", data_dir: str | Path | None = None) -> int:
    """How many training images the dataset has, from the training labels' header alone, so
    that flags can be checked against it before anything is loaded (60,000 for MNIST and
    Fashion-MNIST when the file is not there yet)."""
    spec, folder = _folder(name, data_dir)
    path = _on_disk(folder, SPLIT_FILES[1])
    if path is None:
        if data_dir is not None:
            raise DataError(f"{folder}: missing {SPLIT_FILES[1]}.gz (or {SPLIT_FILES[1]})")
        return spec.train_rows
    try:
        with open(path, "rb") as handle:
            gzipped = handle.read(2) == b"\x1f\x8b"
        with (gzip.open if gzipped else open)(path, "rb") as handle:
            header = handle.read(8)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    if len(header) < 8:
        raise DataError(f"{path}: too short for an IDX header")
    return int.from_bytes(header[4:8], "big")


def load_test_split(trained_on: str | None, asked: str | None,
                    data_dir: str | Path | None, model: Path) -> Dataset:
    """The test split of the dataset a model was trained on (or the one asked for, with a
    warning when it is another): the training files are not read."""
    dataset = asked or trained_on or "mnist"
    if trained_on not in (None, dataset):
        warnings.warn(f"{model} was trained on {trained_on}; using {dataset}, as --dataset "
                      f"asks", stacklevel=2)
    return load_dataset(dataset, data_dir, test_only=True)
