"""Readers for the IDX and Kaggle-CSV formats, with validation, and the Dataset they produce.

Every reader returns host NumPy uint8 arrays: images (N, 784), labels (N,). Anything that does
not match the format raises DataError naming the file and the problem.
"""

from __future__ import annotations

import gzip
import io
import struct
import warnings
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .errors import DataError

IMAGE_MAGIC = 2051  # IDX: unsigned bytes, 3 dimensions
LABEL_MAGIC = 2049  # IDX: unsigned bytes, 1 dimension
SIDE = 28
PIXELS = SIDE * SIDE
CLASSES = 10


class Dataset(NamedTuple):
    """Train and test splits as host uint8 arrays: images (N, 784), labels (N,)."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    name: str = "mnist"
    source: str | None = None  # the folder of the IDX files it was read from, if any

    def split(self, which: str) -> tuple[np.ndarray, np.ndarray]:
        """(images, labels) of the "train" or "test" split."""
        if which not in ("train", "test"):
            raise ValueError(f"a dataset has a train and a test split, not {which!r}")
        return getattr(self, f"{which}_images"), getattr(self, f"{which}_labels")


def read_payload(path: str | Path) -> bytes:
    """The file's bytes, gunzipped when the file starts with the gzip magic 1f 8b."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return decompress(raw, str(path))


def decompress(raw: bytes, source: str) -> bytes:
    """Gunzip `raw` when it starts with the gzip magic 1f 8b; other bytes pass through."""
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{source}: truncated or corrupt gzip data ({exc})") from None


def _header(payload: bytes, magic: int, fields: int, source: str) -> tuple[int, ...]:
    size = 4 * (1 + fields)
    if len(payload) < size:
        raise DataError(f"{source}: {len(payload)} bytes is too short for an IDX header")
    found, *dims = struct.unpack(f">{1 + fields}I", payload[:size])
    if found != magic:
        other = {IMAGE_MAGIC: "an image file", LABEL_MAGIC: "a label file"}.get(found)
        hint = f"; this is {other}" if other else ""
        raise DataError(f"{source}: wrong magic number {found} (expected {magic}){hint}")
    return tuple(dims)


def _exact_payload(payload: bytes, offset: int, expected: int, what: str, source: str) -> None:
    found = len(payload) - offset
    if found != expected:
        problem = "truncated" if found < expected else "trailing bytes"
        raise DataError(f"{source}: header promises {what} ({expected} bytes) but the file "
                        f"holds {found} ({problem})")


def parse_idx_images(payload: bytes, source: str = "<bytes>") -> np.ndarray:
    """IDX image payload -> (N, 784) uint8. Checks magic 2051, 28x28 and the exact length."""
    count, rows, cols = _header(payload, IMAGE_MAGIC, 3, source)
    if (rows, cols) != (SIDE, SIDE):
        raise DataError(f"{source}: images are {rows}x{cols}, expected {SIDE}x{SIDE}")
    _exact_payload(payload, 16, count * PIXELS, f"{count} images", source)
    return np.frombuffer(payload, dtype=np.uint8, offset=16).reshape(count, PIXELS).copy()


def parse_idx_labels(payload: bytes, source: str = "<bytes>") -> np.ndarray:
    """IDX label payload -> (N,) uint8. Checks magic 2049, the exact length and labels 0-9."""
    (count,) = _header(payload, LABEL_MAGIC, 1, source)
    _exact_payload(payload, 8, count, f"{count} labels", source)
    labels = np.frombuffer(payload, dtype=np.uint8, offset=8).copy()
    check_labels(labels, source)
    return labels


def check_labels(labels: np.ndarray, source: str) -> None:
    """Refuse any label outside 0-9, naming the first one."""
    bad = np.flatnonzero((labels < 0) | (labels >= CLASSES))
    if bad.size:
        raise DataError(f"{source}: label {int(labels[bad[0]])} at index {int(bad[0])} "
                        f"is outside 0-{CLASSES - 1}")


def read_idx_images(path: str | Path) -> np.ndarray:
    return parse_idx_images(read_payload(path), str(path))


def read_idx_labels(path: str | Path) -> np.ndarray:
    return parse_idx_labels(read_payload(path), str(path))


def check_split(images: np.ndarray, labels: np.ndarray, source: str) -> None:
    """Images and labels of one split must have the same count."""
    if len(images) != len(labels):
        raise DataError(f"{source}: {len(images)} images but {len(labels)} labels")


def _refuse_skipped_lines(body: str, path: Path) -> None:
    """A blank line or a '#' line in a CSV's body would be skipped by a lenient reader, which
    shifts every later row's ImageId in a Kaggle submission: refused, naming its line."""
    lines = body.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last row
    for number, line in enumerate(lines, start=2):  # line 1 is the header
        text = line.strip()
        if not text or text.startswith("#"):
            kind = "a blank line" if not text else "a comment line"
            raise DataError(f"{path}: line {number} is {kind}; every line after the header "
                            f"must be a row of pixels (ImageIds count rows)")


def read_kaggle_csv(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Kaggle digit-recognizer CSV -> (images (N, 784) uint8, labels (N,) uint8 or None).

    train.csv has the header `label,pixel0,...,pixel783`; test.csv has no label column,
    so its labels come back as None: it can be predicted on but not evaluated.
    """
    path = Path(path)
    try:
        raw = path.read_bytes().removeprefix(b"\xef\xbb\xbf")  # a BOM, as some editors save
        # pixel CSVs are ASCII; anything else never reaches NumPy's parser
        with io.StringIO(raw.decode("ascii"), newline="") as handle:
            header = handle.readline().strip().split(",")
            pixel_names = [f"pixel{i}" for i in range(PIXELS)]
            if header == ["label", *pixel_names]:
                labelled = True
            elif header == pixel_names:
                labelled = False
            else:
                raise DataError(f"{path}: the header must be label,pixel0,...,pixel783 "
                                f"or pixel0,...,pixel783 (found {len(header)} columns "
                                f"starting {','.join(header[:2])!r})")
            body = handle.read()
            _refuse_skipped_lines(body, path)
            try:
                with warnings.catch_warnings():  # an empty body is reported below, once
                    warnings.simplefilter("ignore", UserWarning)
                    table = np.loadtxt(io.StringIO(body), delimiter=",", dtype=np.int64,
                                       ndmin=2, comments=None)
            except ValueError as exc:
                reason = str(exc).split("; use `usecols`")[0]
                raise DataError(f"{path}: {reason} (rows counted after the header)") from None
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a text CSV file") from None
    width = PIXELS + labelled
    if table.shape[0] == 0:
        raise DataError(f"{path}: no data rows")
    if table.shape[1] != width:
        raise DataError(f"{path}: rows have {table.shape[1]} values, expected {width}")
    pixels = table[:, int(labelled):]
    if pixels.min() < 0 or pixels.max() > 255:
        raise DataError(f"{path}: pixel values must lie in 0-255")
    labels = None
    if labelled:
        check_labels(table[:, 0], str(path))
        labels = table[:, 0].astype(np.uint8)
    return pixels.astype(np.uint8), labels
