"""Readers for the IDX and Kaggle-CSV formats, with validation, and the Dataset they produce.

Every reader returns host NumPy uint8 arrays: images (N, 784), labels (N,). Anything that does
not match the format raises DataError naming the file and the problem.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import struct
import warnings
import zlib
from pathlib import Path
from typing import BinaryIO, NamedTuple

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


GZIP_RATIO = 100  # an IDX payload inflates at most this much from its gzip (MNIST's: ~5x)
ITEM_SIZES = {0x08: 1, 0x09: 1, 0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}  # IDX type codes


def read_payload(path: str | Path, magic: int | None = None) -> bytes:
    """The file's IDX payload, gunzipped when the file starts with the gzip magic 1f 8b, read
    with bounded memory (bounded_payload)."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            return bounded_payload(handle, os.fstat(handle.fileno()).st_size, str(path), magic)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, not an IDX file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None


def decompress(raw: bytes, source: str, magic: int | None = None) -> bytes:
    """The IDX payload in `raw` (gzipped or not), read with bounded memory."""
    return bounded_payload(io.BytesIO(raw), len(raw), source, magic)


def bounded_payload(handle: BinaryIO, size: int, source: str, magic: int | None = None
                    ) -> bytes:
    """The IDX payload behind `handle` (a file of `size` bytes, gzipped when it starts with
    1f 8b): the header first, then at most the size the header implies plus one byte. A
    header whose promise no file of this size could keep (more than GZIP_RATIO times it,
    gzipped), or a payload that goes on past it, is refused without being inflated whole;
    the parsers then check the exact length. With `magic`, a wrong magic number is refused
    from the first four bytes."""
    gzipped = handle.read(2) == b"\x1f\x8b"
    handle.seek(0)
    stream: BinaryIO = gzip.GzipFile(fileobj=handle, mode="rb") if gzipped else handle
    try:
        head = stream.read(4)
        if len(head) < 4:
            raise DataError(f"{source}: {len(head)} bytes is too short for an IDX header")
        if magic is not None:
            _check_magic(int.from_bytes(head, "big"), magic, source)
        dims_bytes = stream.read(4 * head[3])
        if len(dims_bytes) < 4 * head[3]:
            raise DataError(f"{source}: {4 + len(dims_bytes)} bytes is too short for an IDX "
                            f"header")
        dims = struct.unpack(f">{head[3]}I", dims_bytes)
        implied = math.prod(dims) * ITEM_SIZES.get(head[2], 1)
        limit = GZIP_RATIO * size + 2**20 if gzipped else size
        if implied > limit:
            raise DataError(f"{source}: its header promises {implied:,} bytes of data, more "
                            f"than a {size:,}-byte file can hold")
        body = stream.read(implied + 1)  # one byte more: trailing data is seen, not read
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{source}: truncated or corrupt gzip data ({exc})") from None
    return head + dims_bytes + body


def _check_magic(found: int, magic: int, source: str) -> None:
    if found != magic:
        other = {IMAGE_MAGIC: "an image file", LABEL_MAGIC: "a label file"}.get(found)
        hint = f"; this is {other}" if other else ""
        raise DataError(f"{source}: wrong magic number {found} (expected {magic}){hint}")


def _header(payload: bytes, magic: int, fields: int, source: str) -> tuple[int, ...]:
    size = 4 * (1 + fields)
    if len(payload) < size:
        raise DataError(f"{source}: {len(payload)} bytes is too short for an IDX header")
    found, *dims = struct.unpack(f">{1 + fields}I", payload[:size])
    _check_magic(found, magic, source)
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
    return parse_idx_images(read_payload(path, IMAGE_MAGIC), str(path))


def read_idx_labels(path: str | Path) -> np.ndarray:
    return parse_idx_labels(read_payload(path, LABEL_MAGIC), str(path))


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
